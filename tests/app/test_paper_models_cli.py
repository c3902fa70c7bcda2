"""A new user's first runs: each paper checkpoint as downloaded (shrunk: tests/paper_models.py)
through the `triforce` app, `model.name=<folder>`; and the folders that cannot run, each ending in
one `error:` line with exit code 2."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from tests.app.helpers import compose, last_json, run_cli
from tests.paper_models import LLAMA2_FAMILY

OVERRIDES = ["method=triforce", "method.budget=32", "method.gamma=4", "dataset=gutenberg", "dataset.prefill=128",
             "max_new_tokens=8", "logger=none"]


def overrides(books_dir, *extra: str) -> list[str]:
    return [*OVERRIDES, f"dataset.folder={books_dir}", *extra]


def test_llama2_family_runs_with_the_llama_68m_draft(tmp_path, books_dir, paper_models):
    """Yarn-Llama-2 7B/13B (.bin shards), LWM-Text(-Chat) (.bin shards) and llama-68m itself (one
    .bin), each with its sentencepiece tokenizer, drafted by the shrunk llama-68m: one sweep."""
    sweep = tmp_path / "sweep"
    targets = ",".join(str(paper_models[name]) for name in LLAMA2_FAMILY)
    proc = run_cli(["-m", *overrides(books_dir, f"model.name={targets}", "draft=llama-68m",
                                     f"draft.name={paper_models['llama-68m']}", f"hydra.sweep.dir={sweep}")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_json(proc.stdout)["ok"] == len(LLAMA2_FAMILY)
    runs = pd.read_parquet(sweep / "sweep.parquet")
    assert sorted(runs["model.name"]) == sorted(str(paper_models[name]) for name in LLAMA2_FAMILY)
    assert (runs["status"] == "ok").all() and (runs["new_tokens"] == 8).all()
    assert runs["accept_rate/draft"].notna().all() and (runs["speedup"] > 0).all()
    samples = pd.read_parquet(sweep / "sweep_samples.parquet")
    assert (samples["prompt_tokens"] == 128).all() and samples["text"].str.len().gt(0).all()


def test_llama31_runs_with_its_tokenizer_json(tmp_path, books_dir, paper_models):
    """Llama-3.1-8B-Instruct (four safetensors shards, tokenizer.json, GQA, llama3 rope) self-drafting."""
    run_dir = tmp_path / "run"
    proc = run_cli(overrides(books_dir, f"model.name={paper_models['llama-3.1-8b-instruct']}", "draft=self",
                             f"hydra.run.dir={run_dir}"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    assert summary["status"] == "ok" and summary["new_tokens"] == 8
    sample = pd.read_parquet(run_dir / "samples.parquet").iloc[0]
    assert sample["prompt_tokens"] == 128 and sample["text"]


def test_a_tokenizer_that_leaves_out_the_bos_gets_it_with_one_warning_before_any_weights(tmp_path, books_dir,
                                                                                         paper_models):
    """A Yarn-Llama-2 folder whose tokenizer.model lacks its tokenizer_config.json (transformers then
    adds no <s>): the run adds the BOS the model's config names, says so in one warning line before
    any weights are read, and runs."""
    from tests.app.helpers import messages, stderr_lines, weights_read

    folder = tmp_path / "yarn"
    shutil.copytree(paper_models["yarn-llama-2-7b-128k"], folder,
                    ignore=shutil.ignore_patterns("tokenizer_config.json", "special_tokens_map.json"))
    proc = run_cli(overrides(books_dir, f"model.name={folder}", "draft=self", f"hydra.run.dir={tmp_path / 'run'}"),
                   tmp_path, watch_weights=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = f"warning: the tokenizer of {folder} leaves out <s> (id 1), the BOS token the model's config.json names"
    assert [m[:len(warning)] for m in messages(proc.stderr)] == [warning]
    lines = stderr_lines(proc.stderr)
    first_read = next(i for i, line in enumerate(lines) if line.startswith("[weight-watch] read "))
    assert any(line.startswith(warning) for line in lines[:first_read])  # said before any weights load
    assert len(weights_read(proc.stderr)) == 2  # then the target's two shards, each once
    assert last_json(proc.stdout)["status"] == "ok"


def test_folder_without_a_tokenizer_is_one_error_line(tmp_path, books_dir, paper_models):
    folder = tmp_path / "yarn"
    shutil.copytree(paper_models["yarn-llama-2-7b-128k"], folder,
                    ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    proc = run_cli(overrides(books_dir, f"model.name={folder}", "draft=self", f"hydra.run.dir={tmp_path / 'run'}"),
                   tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder} has no tokenizer files"), proc.stderr[-2000:]
    assert "set model.tokenizer to where this model's tokenizer is; model.tokenizer takes a folder" in lines[0]
    record = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert record["status"] == "failed" and "model.tokenizer" in record["error"]


def test_no_tokenizer_fails_before_any_weights_load(tmp_path, books_dir, paper_models, monkeypatch):
    from triforce.app import engines
    from triforce.app.runner import JobContext, run_job

    def forbidden(*a, **k):
        raise AssertionError("weights were loaded before the tokenizer was checked")

    monkeypatch.setattr(engines, "build_engine", forbidden)
    folder = tmp_path / "lwm"
    shutil.copytree(paper_models["lwm-text-128k"], folder, ignore=shutil.ignore_patterns("tokenizer*"))
    result = run_job(compose(*overrides(books_dir, f"model.name={folder}", "draft=self")),
                     JobContext(run_dir=tmp_path / "job"))
    assert result.user_error and "model.tokenizer" in result.error


@pytest.mark.slow  # a CLI start (~5 s); tests/models/test_loading_errors.py covers the checks in-process
def test_a_truncated_draft_beside_a_good_target_is_one_error_line_before_any_weights(tmp_path, books_dir,
                                                                                    paper_models):
    """The draft's weight files are checked with the target's: a cut llama-68m beside an intact
    Yarn-Llama-2 target is reported before any weight file of either is read."""
    from tests.app.helpers import assert_one_error_before_any_weights

    draft = shutil.copytree(paper_models["llama-68m"], tmp_path / "llama-68m")
    shard = draft / "pytorch_model.bin"
    shard.write_bytes(shard.read_bytes()[:1000])
    proc = run_cli(overrides(books_dir, f"model.name={paper_models['yarn-llama-2-7b-128k']}", "draft=llama-68m",
                             f"draft.name={draft}", f"hydra.run.dir={tmp_path / 'run'}"), tmp_path, watch_weights=True)
    line = assert_one_error_before_any_weights(proc, f"draft.name={draft}: weight file {shard} is truncated")
    # a local folder: no made-up repo id in the command
    assert line.endswith(f"`hf download <its Hugging Face id> {shard.name} --local-dir {draft}`")


def test_a_draft_of_another_vocabulary_is_refused_before_any_weights_load(books_dir, paper_models):
    """llama-68m (Llama-2's 32000 tokens) cannot draft for Llama-3.1 (128256): said at validation."""
    import pytest
    from omegaconf import OmegaConf

    from triforce.app.validate import validate
    from triforce.errors import ConfigError

    cfg = OmegaConf.to_container(compose(*overrides(books_dir, f"model.name={paper_models['llama-3.1-8b-instruct']}",
                                                    "draft=llama-68m", f"draft.name={paper_models['llama-68m']}")),
                                 resolve=True)
    with pytest.raises(ConfigError, match=r"draft.name=.*llama-68m has a vocabulary of 1000 tokens \(llama\) against "
                                          r"the target's 768 tokens \(llama\): a draft must share the target's "
                                          r"tokenizer.*model.name=.*llama-3.1-8b-instruct"):
        validate(cfg)
