"""The PG-19 fallback for script datasets, against a stub of the hub: datasets >= 4 refuses the
script with a RuntimeError, 2.20-3.x with a ValueError naming trust_remote_code (the exact messages
those releases raise); then the hub's parquet export is loaded, or one AssetError names a copy."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.app.helpers import compose
from triforce.data.hub import PARQUET_REVISION
from triforce.data.sources import load_samples
from triforce.data.tokenizers import ByteTokenizer
from triforce.errors import AssetError

REPO = "deepmind/pg19"
# datasets/load.py of each release, verbatim
REFUSALS = {
    "datasets>=4": RuntimeError("Dataset scripts are no longer supported, but found pg19.py"),
    "datasets 2.20-3.x, no terminal": ValueError(
        f"The repository for {REPO} contains custom code which must be executed to correctly load the dataset. "
        f"You can inspect the repository content at https://hf.co/datasets/{REPO}.\n"
        "Please pass the argument `trust_remote_code=True` to allow custom code to be run."),
    "datasets 2.20-3.x, answered no": ValueError(
        f"Loading {REPO} requires you to execute the dataset script in that repo on your local machine. Make sure you "
        "have read the code there to avoid malicious use, then set the option `trust_remote_code=True` to remove "
        "this error."),
    "datasets 2.20-3.x, prompt timed out": ValueError(
        "Loading this dataset requires you to execute custom code contained in the dataset repository on your local "
        "machine. Please set the option `trust_remote_code=True` to permit loading of this dataset."),
}


@pytest.fixture
def export_file(tmp_path):
    rows = [{"short_book_title": f"Export {i}", "publication_date": 1900, "url": f"u{i}", "text": f"Book {i}. " * 60}
            for i in range(25)]
    path = tmp_path / "test-00000-of-00001.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture
def hub(monkeypatch, export_file):
    """datasets.load_dataset as the hub answers for deepmind/pg19: the script refused; the parquet
    export served from a local file (or missing). Records every call."""
    import datasets

    real = datasets.load_dataset
    state = {"refusal": None, "export": True, "calls": []}

    def load_dataset(path, *, revision=None, **kw):
        state["calls"].append((path, revision))
        if path != REPO:
            return real(path, revision=revision, **kw)
        if revision != PARQUET_REVISION:  # the repo's script, at any other revision
            raise state["refusal"]
        if state["export"]:
            return real("parquet", data_files={"test": str(export_file)}, **{k: v for k, v in kw.items()
                                                                           if k != "data_files"})
        raise datasets.exceptions.DatasetNotFoundError(f"Revision '{revision}' doesn't exist for dataset '{REPO}' "
                                                       "on the Hub.")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return state


def deepmind_cfg(**kw):
    return {"name": "pg19", "path": REPO, "split": "test", "streaming": True, "num_samples": 20, "prefill": 64, **kw}


@pytest.mark.parametrize("release", list(REFUSALS))
def test_a_refused_script_falls_back_to_the_parquet_export(hub, release):
    hub["refusal"] = REFUSALS[release]
    samples = load_samples(deepmind_cfg(), ByteTokenizer())
    assert [s.title for s in samples] == [f"Export {i}" for i in range(20)]
    assert hub["calls"] == [(REPO, None), (REPO, PARQUET_REVISION)]


@pytest.mark.parametrize("release", list(REFUSALS))
def test_no_export_is_one_error_naming_a_parquet_copy(hub, release):
    hub["refusal"], hub["export"] = REFUSALS[release], False
    with pytest.raises(AssetError) as e:
        load_samples(deepmind_cfg(), ByteTokenizer())
    message = str(e.value)
    assert message.startswith(f"dataset '{REPO}' is a loading script, which datasets ")
    assert f"its parquet export ({PARQUET_REVISION}) could not be loaded (DatasetNotFoundError: Revision" in message
    assert message.endswith("point dataset.path at a parquet copy (for PG-19: emozilla/pg19, what dataset=pg19 uses)")
    assert "\n" not in message


def test_an_explicit_revision_or_another_error_is_not_retried(hub):
    hub["refusal"] = REFUSALS["datasets>=4"]
    with pytest.raises(AssetError, match="could not load dataset 'deepmind/pg19' split 'test' .*RuntimeError"):
        load_samples(deepmind_cfg(revision="main"), ByteTokenizer())
    hub["refusal"] = ConnectionError("Couldn't reach 'deepmind/pg19' on the Hub (LocalEntryNotFoundError)")
    with pytest.raises(AssetError, match=r"could not load dataset 'deepmind/pg19' .*ConnectionError"):
        load_samples(deepmind_cfg(), ByteTokenizer())
    assert PARQUET_REVISION not in [revision for _, revision in hub["calls"]]


def test_a_stream_that_breaks_midway_is_one_error(monkeypatch):
    import datasets

    def rows():
        yield {"text": "Book. " * 30, "short_book_title": "first"}
        raise ConnectionError("Connection reset by peer")

    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: rows())
    with pytest.raises(AssetError, match=r"reading dataset 'emozilla/pg19' split 'test' failed midway "
                                         r"\(ConnectionError: Connection reset by peer\)"):
        load_samples({**deepmind_cfg(), "path": "emozilla/pg19"}, ByteTokenizer())


def test_the_default_pg19_source_is_a_parquet_copy_and_deepmind_stays_selectable():
    from omegaconf import OmegaConf

    def dataset(*overrides):
        return OmegaConf.to_container(compose(*overrides), resolve=True)["dataset"]

    assert dataset("dataset=pg19")["path"] == "emozilla/pg19"
    assert dataset("dataset=pg19_full")["path"] == "emozilla/pg19"
    assert dataset("dataset=pg19_deepmind") == {**dataset("dataset=pg19"), "path": REPO}
    assert dataset("experiment=a100_triforce")["path"] == "emozilla/pg19"


def test_datasets_lower_bound_is_the_release_the_fallback_is_tested_against():
    from importlib.metadata import requires

    assert "datasets>=2.20" in requires("triforce")
