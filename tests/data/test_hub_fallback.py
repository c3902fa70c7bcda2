"""The PG-19 fallback for script datasets, against a stub of the hub: datasets >= 4 refuses the
script with a RuntimeError, 2.20-3.x with a ValueError naming trust_remote_code (the exact messages
those releases raise); then the hub's parquet export is loaded, or one AssetError names a copy."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.app.helpers import compose
from triforce.data import hub as hub_module
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
    monkeypatch.setattr(hub_module, "hub_unreachable", lambda: None)  # this stub hub answers
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
    monkeypatch.setattr(hub_module, "hub_unreachable", lambda: None)
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


# -- the hub out of reach: asked once, quickly; offline from the cache, or one line naming local files --

@pytest.fixture
def probe(monkeypatch):
    """hub_unreachable() asked afresh, against `endpoint`; records the requests it makes."""
    import huggingface_hub.utils
    from huggingface_hub import constants

    requests = []
    session = huggingface_hub.utils.get_session()

    class Counting:
        def head(self, url, **kw):
            requests.append(url)
            return session.head(url, **kw)

    monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: Counting())
    hub_module.hub_unreachable.cache_clear()

    def ask(endpoint: str):
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        return hub_module.hub_unreachable()

    yield ask, requests
    hub_module.hub_unreachable.cache_clear()


def test_an_unreachable_hub_is_found_with_one_request(probe):
    ask, requests = probe
    why = ask("http://127.0.0.1:9")  # nothing listens on the discard port: refused at once
    assert why.startswith("http://127.0.0.1:9: ConnectError: ") and "\n" not in why
    assert ask("http://127.0.0.1:9") == why and requests == ["http://127.0.0.1:9"]  # asked once per process


def test_offline_mode_is_the_answer_without_a_request(probe, monkeypatch):
    import datasets

    ask, requests = probe
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    assert "offline mode is on" in ask("http://127.0.0.1:9") and requests == []


@pytest.mark.parametrize("dataset,repo,split", [("pg19", "emozilla/pg19", "test"),
                                               ("narrativeqa", "deepmind/narrativeqa", "train")])
def test_unreachable_hub_reads_the_cache_offline_then_names_local_files(monkeypatch, dataset, repo, split):
    """Out of reach, a hub id is loaded once, in offline mode and not streamed (a cached split
    loads; a stream would need the hub); not cached, one line names the local-files form."""
    import datasets
    from huggingface_hub import constants
    from omegaconf import OmegaConf

    calls = []

    def load_dataset(path, **kw):
        calls.append((path, kw["split"], kw["streaming"], datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE))
        raise FileNotFoundError(f"Dataset {path} is not cached")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(hub_module, "hub_unreachable", lambda: "https://huggingface.co: ConnectError: refused")
    offline_before = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    cfg = OmegaConf.to_container(compose(f"dataset={dataset}"), resolve=True)["dataset"]
    with pytest.raises(AssetError) as e:
        load_samples(cfg, ByteTokenizer())
    assert calls == [(repo, split, False, True, True)]
    assert (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE) == offline_before  # restored
    assert str(e.value) == (
        f"dataset.path={repo} is on the Hugging Face hub, which is not reachable from here (https://huggingface.co: "
        f"ConnectError: refused), and its split '{split}' is not in the local cache; download it where the hub is "
        "reachable and pass the files: dataset.path=parquet dataset.data_files=<file.parquet> (one file is the split "
        "asked for; json files work the same with dataset.path=json); or use dataset=gutenberg (offline)")


def test_cli_with_the_hub_out_of_reach_is_one_line_naming_local_files(tmp_path, smollm2_dir):
    """dataset=pg19 as a new user runs it without network (the hub's address refusing connections, an
    empty cache): one `error:` line at once, no retry warnings, no weights read."""
    from tests.app.helpers import assert_one_error_before_any_weights, run_cli

    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    proc = run_cli(["dataset=pg19", "dataset.prefill=128", "method.budget=32", "logger=none",
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, env=env, watch_weights=True)
    line = assert_one_error_before_any_weights(
        proc, "dataset.path=emozilla/pg19 is on the Hugging Face hub, which is not reachable from here "
              "(http://127.0.0.1:9: ConnectError: ")
    assert "dataset.path=parquet dataset.data_files=<file.parquet>" in line
