"""PG-19 and NarrativeQA prompts through `datasets.load_dataset`, on small local files the tests write
(`dataset.path: parquet|json` + `data_files`: the same code path as the hub ids)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from triforce.data.prompts import LWM_PREFIX, LWM_SUFFIX
from triforce.data.sources import load_samples
from triforce.data.tokenizers import ByteTokenizer
from triforce.errors import AssetError, ConfigError


@pytest.fixture
def pg19_file(tmp_path):
    rows = [{"short_book_title": f"Book {i}", "publication_date": 1900 + i, "url": f"http://gutenberg.org/{i}",
             "text": f"Book {i} text. " * 300} for i in range(25)]
    path = tmp_path / "pg19-test.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture
def narrativeqa_file(tmp_path):
    rows = []
    for q in range(6):  # 6 questions over 3 documents
        d = q // 2
        rows.append({"document": {"id": f"doc{d}", "kind": "gutenberg", "url": "", "file_size": 1, "word_count": 1,
                                  "start": "", "end": "", "text": f"Story {d}. " * 400,
                                  "summary": {"text": "s", "tokens": ["s"], "url": "", "title": f"Title {d}"}},
                     "question": {"text": "Who?", "tokens": ["Who", "?"]}, "answers": [{"text": "A", "tokens": ["A"]}]})
    path = tmp_path / "nqa-test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def pg19_cfg(path, **kw):
    return {"name": "pg19", "path": "parquet", "data_files": {"test": str(path)}, "split": "test",
            "streaming": True, "num_samples": 20, "prefill": 256, **kw}


def test_pg19_gs_set_is_the_first_20_books_cut_to_prefill(pg19_file):
    tok = ByteTokenizer()
    samples = load_samples(pg19_cfg(pg19_file), tok)
    assert [s.title for s in samples] == [f"Book {i}" for i in range(20)]
    assert all(len(s.prompt_ids) == 256 for s in samples)
    assert samples[3].prompt_ids == tok.encode("Book 3 text. " * 300)[:256]


def test_pg19_full_split_without_streaming(pg19_file):
    samples = load_samples(pg19_cfg(pg19_file, num_samples=None, streaming=False), ByteTokenizer())
    assert len(samples) == 25


def test_pg19_books_shorter_than_prefill(pg19_file):
    with pytest.raises(ConfigError, match="fewer than dataset.prefill=99999"):
        load_samples(pg19_cfg(pg19_file, prefill=99999), ByteTokenizer())


def test_narrativeqa_wraps_distinct_books_in_the_lwm_prompt(narrativeqa_file):
    tok = ByteTokenizer()
    cfg = {"name": "narrativeqa", "path": "json", "data_files": {"test": str(narrativeqa_file)}, "split": "test",
           "num_samples": 20, "prefill": 600}
    samples = load_samples(cfg, tok)
    assert [s.id for s in samples] == ["doc0", "doc1", "doc2"]
    assert [s.title for s in samples] == ["Title 0", "Title 1", "Title 2"]
    for s in samples:
        assert len(s.prompt_ids) == 600
        text = tok.decode(s.prompt_ids)
        assert text.startswith(LWM_PREFIX + "Story") and text.endswith(LWM_SUFFIX)
    assert len(load_samples({**cfg, "num_samples": 2}, tok)) == 2


def test_missing_dataset_file_is_an_asset_error(tmp_path):
    with pytest.raises(AssetError, match="could not load dataset 'parquet'"):
        load_samples(pg19_cfg(tmp_path / "missing.parquet", streaming=False), ByteTokenizer())


def test_narrativeqa_picks_the_rows_asked_for_as_the_reference(narrativeqa_file):
    """rows: documents by row index (the reference's 20 train rows), text from `text_start` on."""
    tok = ByteTokenizer()
    cfg = {"name": "narrativeqa", "path": "json", "data_files": {"test": str(narrativeqa_file)}, "split": "test",
           "rows": [4, 1], "text_start": 3, "num_samples": 20, "prefill": 600}
    samples = load_samples(cfg, tok)
    assert [s.id for s in samples] == ["doc2", "doc0"]
    assert tok.decode(samples[1].prompt_ids).startswith(LWM_PREFIX + "ry 0. Story 0.")  # "Story 0." from char 3
    assert [s.id for s in load_samples({**cfg, "num_samples": 1}, tok)] == ["doc2"]
    with pytest.raises(ConfigError, match=r"dataset.rows: the split has only 6 rows, so rows \[9\] do not exist"):
        load_samples({**cfg, "rows": [0, 9]}, tok)
    with pytest.raises(ConfigError, match=r"dataset.rows=\[-1\] must be row indices"):
        load_samples({**cfg, "rows": [-1]}, tok)


def test_narrativeqa_config_is_the_references_lwm_set():
    from omegaconf import OmegaConf

    from tests.app.helpers import compose

    cfg = OmegaConf.to_container(compose("dataset=narrativeqa"), resolve=True)["dataset"]
    assert cfg["split"] == "train" and cfg["text_start"] == 3 and cfg["num_samples"] == 20
    assert cfg["rows"] == [0, 50, 300, 800, 950, 1100, 2150, 2450, 2550, 2750, 3350, 3400, 3600, 3900, 4000, 4100,
                           4200, 4400, 4500, 4550]


# -- local files: one file is the split asked for ---------------------------------------------------

@pytest.mark.parametrize("files", ["one", "list"])
def test_one_local_file_or_a_list_is_the_split_asked_for(pg19_file, files):
    """datasets names a bare file (or list) `train`; the run asks for `test` (pg19.yaml's split)."""
    data_files = str(pg19_file) if files == "one" else [str(pg19_file)]
    samples = load_samples(pg19_cfg(pg19_file, data_files=data_files, num_samples=3), ByteTokenizer())
    assert [s.title for s in samples] == ["Book 0", "Book 1", "Book 2"]


def test_a_mapping_without_the_split_asked_for_is_one_error_about_local_files(pg19_file):
    with pytest.raises(AssetError, match=r"could not load dataset 'parquet' split 'test' \(ValueError: .*\); "
                                         r"check dataset.path, dataset.data_files and dataset.split$"):
        load_samples(pg19_cfg(pg19_file, data_files={"train": str(pg19_file)}), ByteTokenizer())


def readme_command(start: str) -> list[str]:
    """The README's command line that begins with `start`, as the words a shell passes on."""
    import shlex
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    found = [line.strip() for line in readme.splitlines() if line.strip().startswith(start)]
    assert len(found) == 1, f"README.md has {len(found)} lines starting with {start!r}"
    return shlex.split(found[0])


def test_the_readme_local_parquet_command_runs(tmp_path, pg19_file):
    """The README's command for local PG-19 files, word for word, on a parquet file of that name in the
    working folder; appended settings only make it seconds-long (the tiny model, 2 short prompts)."""
    import shutil

    from tests.app.helpers import last_json, messages, run_cli

    command = readme_command("triforce dataset=pg19 dataset.path=parquet")
    assert command[0] == "triforce"
    data_file = next(w.split("=", 1)[1] for w in command if w.startswith("dataset.data_files="))
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(pg19_file, work / data_file)
    run_dir = work / "run"
    proc = run_cli([*command[1:], "model=tiny", "draft=self", "method.budget=32", "dataset.prefill=128",
                    "dataset.num_samples=2", "max_new_tokens=4", "logger=none", f"hydra.run.dir={run_dir}"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert messages(proc.stderr) == []
    summary = last_json(proc.stdout)
    assert summary["status"] == "ok" and summary["num_samples"] == 2
    samples = pd.read_parquet(run_dir / "samples.parquet")
    assert list(samples["title"]) == ["Book 0", "Book 1"]
