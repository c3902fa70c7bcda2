"""Settings that run but mean nothing here are said as one warning line each, before weights load."""

from __future__ import annotations

from triforce.app.advice import budget_warning, offload_warning, run_warnings
from triforce.engine import MethodConfig


def test_offload_on_a_cpu_is_said():
    assert offload_warning({"device": "cpu", "offload": True}).startswith(
        "hardware.offload=true on device cpu: the KV cache is in host memory already")
    assert offload_warning({"device": "cpu", "offload": False}) is None
    assert offload_warning({"device": "cuda", "offload": True}) is None


def test_a_budget_as_large_as_the_prompt_is_said():
    method = MethodConfig(name="triforce", budget=512, chunk_size=8)
    assert budget_warning(method, [4096, 600]) is None
    assert budget_warning(method, [4096, 512]).startswith(
        "method.budget=512 is not smaller than the 512-token prompt: the middle level's cache then holds the whole "
        "prompt")
    assert budget_warning(MethodConfig(name="spec", budget=512), [128]) is None  # no middle level
    fraction = MethodConfig(name="retrieval_spec", budget=None, budget_fraction=0.5, chunk_size=8)
    assert budget_warning(fraction, [128]) is None  # a fraction is always below the prompt


def test_a_run_prints_them_as_warning_lines_before_the_weights_load(tmp_path, books_dir, monkeypatch, capsys):
    from triforce.app import engines
    from triforce.app.runner import JobContext, run_job
    from tests.app.helpers import compose, tiny_overrides

    build, said = engines.build_engine, []

    def build_engine(*a, **k):
        said.append(capsys.readouterr().err)  # what was said before the weights load
        return build(*a, **k)

    monkeypatch.setattr(engines, "build_engine", build_engine)
    cfg = compose(*tiny_overrides(books_dir, "method.budget=256", "hardware.offload=true", "hardware.on_chip_layers=1",
                                  "max_new_tokens=2", "warmup=false", "baseline=false"))
    capsys.readouterr()
    result = run_job(cfg, JobContext(run_dir=tmp_path / "run"))
    assert result.ok, result.error
    warnings = [line for line in said[0].splitlines() if line.startswith("warning: ")]
    assert warnings[0].startswith("warning: hardware.offload=true on device cpu")
    assert warnings[1].startswith("warning: method.budget=256 is not smaller than the 128-token prompt")


def test_run_warnings_collects_both():
    method = MethodConfig(name="triforce", budget=64, chunk_size=8)
    assert run_warnings({"hardware": {"device": "cpu"}}, method, [256]) == []
    assert len(run_warnings({"hardware": {"device": "cpu", "offload": True}}, method, [32])) == 2
