"""The Qwen2.5, Qwen3 and Mistral checkpoints as downloaded (shrunk: tests/family_models.py) through
the `triforce` app: each target with its family's small draft and with draft=self; Mistral v0.1's
sliding window bounds a run before any weights are read."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.app.helpers import (assert_one_error_before_any_weights, compose, last_json, run_cli, weights_read)
from tests.family_models import FAMILY_DRAFTS, SHRUNK_WINDOW

OVERRIDES = ["method=triforce", "method.budget=32", "method.gamma=4", "dataset=gutenberg", "dataset.prefill=128",
             "max_new_tokens=8", "logger=none"]
LOOKAHEAD = 4 + 2 + 2  # method.gamma + draft_gamma + 2: the speculative positions a run may occupy
TARGETS = ["qwen2.5-7b-instruct-1m", "qwen3-8b", "mistral-nemo-instruct-2407", "mistral-7b-instruct-v0.1"]


def overrides(books_dir, *extra: str) -> list[str]:
    return [*OVERRIDES, f"dataset.folder={books_dir}", *extra]


@pytest.mark.parametrize("target", list(FAMILY_DRAFTS))
def test_a_qwen_target_runs_with_its_familys_draft(tmp_path, books_dir, family_models, target):
    """Qwen2.5-7B-Instruct-1M drafted by Qwen2.5-0.5B-Instruct (a smaller padded embedding table,
    tied), Qwen3-8B (its preset's YaRN x4) by Qwen3-0.6B: the presets (`model=`, `draft=`) pointed at
    the downloaded folders; the target's shards and the draft's one file, each read once."""
    draft = FAMILY_DRAFTS[target]
    run_dir = tmp_path / "run"
    proc = run_cli(overrides(books_dir, f"model={target}", f"model.name={family_models[target]}", f"draft={draft}",
                             f"draft.name={family_models[draft]}", f"hydra.run.dir={run_dir}"),
                   tmp_path, watch_weights=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    assert summary["status"] == "ok" and summary["new_tokens"] == 8
    assert 0 <= summary["accept_rate/draft"] <= 1 and summary["proposed/draft"] > 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "ok"
    read = weights_read(proc.stderr)
    shards = sorted(family_models[target].glob("model-*.safetensors"))
    assert sorted(read) == sorted([*map(str, shards), str(family_models[draft] / "model.safetensors")])
    sample = pd.read_parquet(run_dir / "samples.parquet").iloc[0]
    assert sample["prompt_tokens"] == 128 and sample["text"]


def test_every_family_target_runs_self_drafting(tmp_path, books_dir, family_models):
    """Qwen2.5-1M, Qwen3-8B, Mistral-Nemo and Mistral-7B-v0.1 (a 144-position run within its
    256-token window) with draft=self, one sweep. Of the folders' other weight files, none is read:
    Nemo's consolidated.safetensors (Mistral's own format) nor v0.1's `.bin` copies."""
    sweep = tmp_path / "sweep"
    targets = ",".join(str(family_models[name]) for name in TARGETS)
    proc = run_cli(["-m", *overrides(books_dir, f"model.name={targets}", "draft=self", f"hydra.sweep.dir={sweep}")],
                   tmp_path, watch_weights=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_json(proc.stdout)["ok"] == len(TARGETS)
    runs = pd.read_parquet(sweep / "sweep.parquet")
    assert sorted(runs["model.name"]) == sorted(str(family_models[name]) for name in TARGETS)
    assert (runs["status"] == "ok").all() and (runs["new_tokens"] == 8).all() and (runs["speedup"] > 0).all()
    assert runs["accept_rate/draft"].notna().all()
    assert len(list(sweep.glob("*/summary.json"))) == len(TARGETS)
    read = weights_read(proc.stderr)
    assert read and all(path.endswith(".safetensors") and "consolidated" not in path for path in read), read
    assert len(read) == len(set(read)) == 4 + 5 + 5 + 2  # every shard of each target, once


def test_a_run_past_the_sliding_window_is_one_error_line_before_any_weights(tmp_path, books_dir, family_models):
    """Mistral-7B-v0.1 (window 4096, here 256): a prefill whose run would pass the window is
    refused with exit 2 and one `error:` line before any weight file is read."""
    folder = family_models["mistral-7b-instruct-v0.1"]
    prefill = SHRUNK_WINDOW - 8 - LOOKAHEAD + 1  # one position too many
    run_dir = tmp_path / "run"
    proc = run_cli(overrides(books_dir, f"model.name={folder}", "draft=self", f"dataset.prefill={prefill}",
                             f"hydra.run.dir={run_dir}"), tmp_path, watch_weights=True)
    line = assert_one_error_before_any_weights(
        proc, f"dataset.prefill={prefill} is too long for a sliding-window model")
    assert f"its window of {SHRUNK_WINDOW} tokens" in line and f"prefill <= {prefill - 1} runs exactly" in line
    record = json.loads((run_dir / "summary.json").read_text())
    assert record["status"] == "failed" and "sliding-window" in record["error"]


def test_the_window_bounds_the_prefill_to_the_position(books_dir, family_models):
    """In-process (validate, no weights): the longest prefill within the window passes, one more does
    not; model.max_context cannot lift the bound."""
    from omegaconf import OmegaConf

    from triforce.app.validate import validate
    from triforce.errors import PromptTooLongError

    folder = family_models["mistral-7b-instruct-v0.1"]
    longest = SHRUNK_WINDOW - 8 - LOOKAHEAD

    def plan(*extra: str):
        cfg = compose(*overrides(books_dir, f"model.name={folder}", "draft=self", *extra))
        return validate(OmegaConf.to_container(cfg, resolve=True))

    assert plan(f"dataset.prefill={longest}").max_context == SHRUNK_WINDOW
    for extra in ([], ["model.max_context=32768"]):
        with pytest.raises(PromptTooLongError, match="sliding-window"):
            plan(f"dataset.prefill={longest + 1}", *extra)
    # Mistral-Nemo has no window: its context is config.json's
    nemo = compose(*overrides(books_dir, f"model.name={family_models['mistral-nemo-instruct-2407']}", "draft=self"))
    assert validate(OmegaConf.to_container(nemo, resolve=True)).max_context == 1024000


def test_a_draft_of_another_family_is_refused_before_any_weights_load(books_dir, family_models):
    """Qwen3-0.6B (448 rows) under Qwen2.5-7B-1M (512): fewer rows, but another family's tokenizer."""
    from omegaconf import OmegaConf

    from triforce.app.validate import validate
    from triforce.errors import ConfigError

    cfg = compose(*overrides(books_dir, f"model.name={family_models['qwen2.5-7b-instruct-1m']}",
                             f"draft.name={family_models['qwen3-0.6b']}"))
    with pytest.raises(ConfigError, match=r"draft.name=.*qwen3-0.6b has a vocabulary of 448 .* a draft must share "
                                          r"the target's tokenizer"):
        validate(OmegaConf.to_container(cfg, resolve=True))


def test_a_mixture_of_experts_folder_is_refused_at_validation(tmp_path, books_dir, family_models):
    """A Qwen3-MoE config.json beside weight files: the app's validation (which reads no weights)
    refuses it, naming what it is."""
    import shutil

    from omegaconf import OmegaConf

    from triforce.app.validate import validate
    from triforce.errors import ConfigError

    folder = shutil.copytree(family_models["qwen3-8b"], tmp_path / "qwen3-moe")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    cfg = compose(*overrides(books_dir, f"model.name={folder}", "draft=self"))
    with pytest.raises(ConfigError, match=r"'Qwen3MoeForCausalLM' \(model_type='qwen3_moe' \(mixture-of-experts\)\)"):
        validate(OmegaConf.to_container(cfg, resolve=True))
