"""Settings that run but mean nothing here are said as one warning line each, before weights load."""

from __future__ import annotations

from triforce.app.advice import batch_warning, budget_warning, offload_warning, run_warnings, samples_warning
from triforce.config import HardwareConfig, MethodConfig, RunConfig


def test_offload_on_a_cpu_is_said():
    assert offload_warning(HardwareConfig(device="cpu", offload=True)).startswith(
        "hardware.offload=true on device cpu: the KV cache is in host memory already")
    assert offload_warning(HardwareConfig(device="cpu", offload=False)) is None
    assert offload_warning(HardwareConfig(device="cuda", offload=True)) is None


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
    def run(**hardware) -> RunConfig:
        return RunConfig.parse({"model": {"name": "tiny-random"}, "draft": {"name": "self"},
                                "method": {"name": "triforce", "budget": 64, "chunk_size": 8},
                                "hardware": {"device": "cpu", **hardware}, "dataset": {"prefill": 256}})

    assert run_warnings(run(), [256]) == []
    assert len(run_warnings(run(offload=True), [32])) == 2


def test_fewer_prompts_than_num_samples_or_batch_size_is_said():
    assert samples_warning({"name": "pg19", "num_samples": 20}, 3) == (
        "dataset.num_samples=20 but dataset 'pg19' gives only 3 prompt(s): the run uses those 3; set "
        "dataset.num_samples=3 (or null: all there are) to ask for what is there")
    assert samples_warning({"name": "pg19", "num_samples": 3}, 3) is None
    assert samples_warning({"name": "pg19_full", "num_samples": None}, 3) is None  # null: all, however many
    assert batch_warning(HardwareConfig(batch_size=8), 3).startswith(
        "hardware.batch_size=8 but the run has only 3 prompt(s): they run as one batch of 3")
    assert batch_warning(HardwareConfig(batch_size=4), 5) is None  # a smaller last batch is how batches go
    assert batch_warning(HardwareConfig(), 1) is None


def test_cli_shortfalls_are_warning_lines_and_the_run_goes_on(tmp_path, books_dir):
    """Two books asked for as three, in batches of four: two warning lines before the run, which runs
    the two as one batch (the tiny model reads no weights: said before anything could be read)."""
    from tests.app.helpers import last_json, messages, run_cli, tiny_overrides

    proc = run_cli(tiny_overrides(books_dir, "dataset.num_samples=3", "hardware.batch_size=4", "warmup=false",
                                  "max_new_tokens=4", f"hydra.run.dir={tmp_path / 'run'}"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = messages(proc.stderr)
    assert len(said) == 2, proc.stderr[-3000:]
    assert said[0].startswith("warning: dataset.num_samples=3 but dataset 'gutenberg' gives only 2 prompt(s)")
    assert said[1].startswith("warning: hardware.batch_size=4 but the run has only 2 prompt(s)")
    summary = last_json(proc.stdout)
    assert summary["num_samples"] == 2 and summary["batch_size"] == 2
