"""Bad values are rejected at start, before any model loads, naming the value and the allowed range."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from triforce.app import engines
from triforce.app.runner import JobContext, run_job
from triforce.app.validate import validate
from triforce.errors import ConfigError, ModelNotFoundError, PromptTooLongError
from tests.app.helpers import compose, run_cli, tiny_overrides


def cfg_of(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(*overrides), resolve=True)


@pytest.mark.parametrize("override,pattern", [
    ("method.budget=0", r"method.budget=0 must be a positive"),
    ("method.budget=-8", r"method.budget=-8 must be a positive"),
    ("method.budget=4", r"method.budget=4 is smaller than method.chunk_size=8.*2 \* chunk_size = 16"),
    ("method.budget=12", r"method.budget=12 must be at least 2 \* chunk_size = 16"),
    ("method.gamma=0", r"method.gamma=0 must be a positive"),
    ("method.gamma=-3", r"method.gamma=-3 must be a positive"),
    ("method.draft_gamma=0", r"method.draft_gamma=0"),
    ("method.chunk_size=0", r"method.chunk_size=0 must be a positive"),
    ("method.name=beam", r"method.name='beam': choose one of autoregressive, spec, retrieval_spec, triforce"),
    ("sampling.top_p=0", r"sampling.top_p=0"),
    ("max_new_tokens=0", r"^max_new_tokens=0 must be a positive integer$"),  # a top-level key: no leading dot
    ("model.dtype=bogus", r"^model.dtype='bogus': choose one of auto, float32, fp32, float16, fp16, bfloat16, bf16$"),
    ("draft.dtype=fp8", r"^draft.dtype='fp8': choose one of auto, float32"),
    ("dataset.prefill=0", r"dataset.prefill=0 must be a positive"),
    ("dataset.name=imagenet", r"dataset.name='imagenet' is unknown; choose one of gutenberg, pg19, narrativeqa"),
    ("draft=none", r"method=triforce needs a draft model"),
    ("hardware.on_chip_layers=-1", r"hardware.on_chip_layers=-1 must be a non-negative integer"),
    ("hardware.tensor_parallel=0", r"hardware.tensor_parallel=0 must be a positive integer"),
    ("logger.name=mlflow", r"logger.name='mlflow': choose one of wandb, none"),
    ("hardware.progress=sometimes", r"hardware.progress='sometimes' must be true or false"),
    ("reference_acceptance=true baseline=false",
     r"reference_acceptance=true measures along .* set baseline=true"),
    ("hardware.prefill_memo_gb=-1", r"hardware.prefill_memo_gb=-1 must be a number of GB >= 0"),
    ("method.middle_cache=h2o", r"method.middle_cache='h2o': choose one of retrieval, streaming, hybrid"),
    ("method.recent=1.5", r"method.recent=1.5 must be a share of the budget in \[0, 1\]"),
    ("method.recent_min=-1", r"method.recent_min=-1 must be a number of tokens >= 0"),
    ("method.draft_slack=-1", r"method.draft_slack=-1 must be a number of tokens >= 0 \(or null"),
    ("method.recent_min=0.5", r"method.recent_min=0.5 must be a whole number"),
    ("method.budget_fraction=0.125", r"set exactly one.*method.budget=null method.budget_fraction=0.125"),
    ("method.budget=null", r"method.budget=null and method.budget_fraction=null: set exactly one"),
    ("method.budget=null method.budget_fraction=0", r"method.budget_fraction=0 must be a fraction of the prompt"),
    ("method.budget=null method.budget_fraction=2", r"method.budget_fraction=2 must be a fraction"),
    # 1% of the 256-token prompt of the tiny model is 3 tokens: checked against dataset.prefill
    ("method.budget=null method.budget_fraction=0.01 dataset.prefill=256",
     r"budget_fraction=0.01 of a 256-token prompt gives a budget of 3 tokens: .*2 \* chunk_size"),
])
def test_bad_values_name_value_and_range(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate(cfg_of("model=tiny", *override.split()), environment=False)


# The typed configuration (triforce/config.py): a value of the wrong type or an unknown key is one
# error naming it, before any weights load (these passed validation and died after loading, or were
# accepted silently, before the configuration had one owner).
@pytest.mark.parametrize("override,pattern", [
    ("method.gamma=2.5", r"method.gamma=2.5 must be a whole number"),
    ("method.draft_gamma=2.5", r"method.draft_gamma=2.5 must be a whole number"),
    ("method.chunk_size=2.5", r"method.chunk_size=2.5 must be a whole number"),
    ("method.draft_window=2.5", r"method.draft_window=2.5 must be a whole number"),
    ("method.draft_slack=2.5", r"method.draft_slack=2.5 must be a whole number or null"),
    ("hardware.prefill_chunk=2.5", r"hardware.prefill_chunk=2.5 must be a whole number or null"),
    ("method.rebuild_every=2.5", r"method.rebuild_every=2.5 must be a whole number"),
    ("+foo=1", r"unknown top-level option\(s\) \['foo'\]"),
    ("+method.gama=4", r"unknown method option\(s\) \['gama'\]"),
    ("+hardware.gpus=2", r"unknown hardware option\(s\) \['gpus'\]"),
    ("sampling.temperature=abc", r"sampling.temperature='abc' must be a number"),
    ("hardware.executor=bogus", r"hardware.executor='bogus': choose one of auto, eager, static, graphs"),
    ("hardware.executor=graphs", r"hardware.executor=graphs needs a CUDA device"),
    ("hardware.batch_size=0", r"hardware.batch_size=0 must be a positive number of prompts"),
    ("hardware.batch_size=2.5", r"hardware.batch_size=2.5 must be a whole number"),
    ("hardware.kernels.linear=cublas", r"hardware.kernels.linear='cublas': choose triton"),
    ("seed=abc", r"seed='abc' must be a whole number"),
    ("max_new_tokens=2.5", r"max_new_tokens=2.5 must be a whole number"),
])
def test_values_of_the_wrong_type_and_unknown_keys_are_refused(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate(cfg_of("model=tiny", override), environment=False)


def test_unknown_model_name():
    with pytest.raises(ModelNotFoundError, match=r"model.name='nope' is unknown: use a model config"):
        validate(cfg_of("model.name=nope"), environment=False)
    with pytest.raises(ModelNotFoundError, match=r"draft.name='nope'"):
        validate(cfg_of("draft.name=nope"), environment=False)


def test_prompt_longer_than_the_context_of_the_tiny_model():
    # tiny context 8192: 8192 - 32 new - (6 + 2 + 2) lookahead = 8150 tokens of prompt at most
    validate(cfg_of("model=tiny", "dataset.prefill=8150", "max_new_tokens=32"), environment=False)
    with pytest.raises(PromptTooLongError, match=r"dataset.prefill=8151 is too long.*context of 8192 allows prefill <= 8150"):
        validate(cfg_of("model=tiny", "dataset.prefill=8151", "max_new_tokens=32"), environment=False)


def test_prompt_longer_than_a_paper_model_context_without_weights():
    with pytest.raises(PromptTooLongError, match=r"context of 131072"):
        validate(cfg_of("experiment=a100_triforce", "dataset.prefill=131000"), environment=False)


def test_prompt_longer_than_smollm2_reads_only_its_config(smollm2_dir):
    with pytest.raises(PromptTooLongError, match=r"context of 8192"):
        validate(cfg_of("dataset.prefill=8190"))
    plan = validate(cfg_of("model=smollm2_yarn32k", "dataset.prefill=8190"))
    assert plan.max_context == 32768


def test_cuda_profile_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^hardware=a100 runs on device 'cuda' and no CUDA device is available "
                                          r"here; use hardware=cpu on this machine$"):
        validate(cfg_of("model=tiny", "hardware=a100"))
    # the CPU profile with its device overridden: the override is what to change, not the profile
    with pytest.raises(ConfigError, match=r"^hardware.device=cuda needs a CUDA device and none is available here; "
                                          r"set hardware.device=cpu \(or leave it out: hardware=cpu runs on the CPU\)$"):
        validate(cfg_of("model=tiny", "hardware=cpu", "hardware.device=cuda"))


def test_run_job_rejects_before_any_model_loads(tmp_path, monkeypatch, books_dir):
    def forbidden(*a, **k):
        raise AssertionError("a model was built for an invalid config")

    monkeypatch.setattr(engines, "build_engine", forbidden)
    for bad in ("method.budget=0", "method.gamma=0", "dataset.prefill=9000", "model.name=nope",
                "dataset.name=nope", "method.gamma=2.5", "method.chunk_size=2.5", "hardware.prefill_chunk=2.5",
                "hardware.executor=graphs", "sampling.temperature=abc", "model.dtype=bogus"):
        cfg = compose(*tiny_overrides(books_dir, bad))
        result = run_job(cfg, JobContext(run_dir=tmp_path / bad.replace("=", "_")))
        assert result.status == "failed" and result.user_error, (bad, result.error)
        assert bad.split("=")[1] in result.error


def test_cli_bad_value_exits_2_with_one_error_line(tmp_path, books_dir):
    proc = run_cli(tiny_overrides(books_dir, "max_new_tokens=0", f"hydra.run.dir={tmp_path / 'run'}"), tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: max_new_tokens=0 must be a positive integer"]
    assert "Traceback" not in proc.stdout + proc.stderr
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert '"status": "failed"' in summary


# -- the pre-flight memory plan on a GPU ------------------------------------------------------------

@pytest.fixture
def llama2_7b_folder(tmp_path):
    """A Llama-2-7B-128K-shaped config.json and no weights: validation must not need them."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=131072).save_pretrained(tmp_path)
    return tmp_path


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device with `free` GiB free, as torch would report it (no GPU is touched)."""
    import torch

    def install(free_gib: float):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * 2**30), 80 * 2**30))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")

    return install


def paper_setting(folder, *extra: str) -> dict:
    return cfg_of("experiment=a100_triforce", f"model.name={folder}", "draft=self", "logger=none", *extra)


def test_a_run_that_cannot_fit_the_gpu_is_refused_before_any_weights_load(llama2_7b_folder, fake_gpu):
    fake_gpu(40)  # a 40 GB card: the paper's 124,928-token prompt needs ~75 GiB
    with pytest.raises(ConfigError, match=r"needs about 7\d\.\d GiB on Test GPU but 40.0 GiB are free.*"
                                          r"lower dataset.prefill to <= \d+"):
        validate(paper_setting(llama2_7b_folder))


def test_the_paper_setting_passes_the_plan_on_an_80_gb_card(llama2_7b_folder, fake_gpu):
    fake_gpu(79)  # what an H100 / A100 80GB leaves free
    plan = validate(paper_setting(llama2_7b_folder))
    assert plan.max_context == 131072


def test_the_plan_names_the_prefill_chunk_when_it_is_the_excess(llama2_7b_folder, fake_gpu):
    fake_gpu(77.5)  # fits with 8K-token prefill chunks, not when the prompt runs in one forward
    validate(paper_setting(llama2_7b_folder, "hardware.prefill_chunk=8192"))
    with pytest.raises(ConfigError, match="lower hardware.prefill_chunk to 4096"):
        validate(paper_setting(llama2_7b_folder, "hardware.prefill_chunk=null"))
