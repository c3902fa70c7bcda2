"""Load a Hugging Face dataset split for prompt construction, with errors a user can act on.

`path` is anything `datasets.load_dataset` takes: a hub id (`emozilla/pg19`) or a packaged
builder (`parquet`, `json`) with `data_files` — the tests build small local datasets that way and
go through exactly the same code path as the hub. One file (or a list of files) in `data_files` is
the split asked for: `datasets` would name it `train`, and PG-19's `test` would then not exist.

A hub id is loaded only once the hub has answered one short request (asked once per process):
offline, `datasets` would retry every request with backoff, ~23 s of warnings before the same
failure. Without an answer, the dataset is read in offline mode, from the local cache if it is
there, and otherwise one error names the local-files form.

A script-based dataset (`deepmind/pg19`) is refused by every `datasets` the project allows:
>= 4 no longer runs loading scripts (RuntimeError "Dataset scripts are no longer supported"),
2.20-3.x ask for `trust_remote_code=True` (a ValueError, after an interactive prompt on a
terminal). Either way the hub's parquet export of the repo (`refs/convert/parquet`) is tried
next, which needs no code to run; where there is none, the error names a parquet copy.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from triforce.errors import AssetError

_NO_SCRIPTS = "scripts are no longer supported"  # datasets >= 4
_REMOTE_CODE = "trust_remote_code"  # datasets 2.20-3.x: each of its refusals names the option
PARQUET_REVISION = "refs/convert/parquet"
PROBE_TIMEOUT_S = 3.0  # the hub answers in well under a second where it is reachable at all
LOCAL_FILES = ("dataset.path=parquet dataset.data_files=<file.parquet> (one file is the split asked for; "
               "json files work the same with dataset.path=json)")


def iter_records(path: str, *, split: str, name: str | None = None, data_files: Any = None,
                 revision: str | None = None, streaming: bool = True,
                 limit: int | None = None) -> Iterator[Mapping[str, Any]]:
    """Rows of one split (the first `limit` of them), streamed unless `streaming` is false."""
    rows = _load(path, split=split, name=name, data_files=split_files(data_files, split), revision=revision,
                 streaming=streaming)
    return _guarded(itertools.islice(iter(rows), limit), path, split)


def split_files(data_files: Any, split: str) -> Any:
    """`data_files` as datasets takes them, with one file or a list of files named as the split asked
    for (a mapping names its splits itself)."""
    if data_files is None or isinstance(data_files, Mapping):
        return data_files
    return {split.split("[", 1)[0]: data_files}  # `test[:10]` slices the split named `test`


def is_hub_id(path: str) -> bool:
    """owner/name, not a local folder: what load_dataset fetches from the hub."""
    return path.count("/") == 1 and not path.startswith(("/", ".", "~")) and not Path(path).expanduser().exists()


@functools.lru_cache(maxsize=None)
def hub_unreachable() -> str | None:
    """None when the hub answers; else why not, in a few words. Asked once per process (a sweep's
    jobs share the answer). Offline mode set by the user (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE) is
    taken as the answer without a request."""
    import datasets
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if datasets.config.HF_HUB_OFFLINE or constants.HF_HUB_OFFLINE:
        return "offline mode is on: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE"
    try:  # the session huggingface_hub itself uses (its proxies and certificates); any answer will do
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - DNS, refused, timeout, proxy: all mean the same here
        return f"{constants.ENDPOINT}: {type(e).__name__}: {_first_line(e)}"
    return None


@contextlib.contextmanager
def _offline():
    """datasets and huggingface_hub in offline mode for one load: both read the flag when called,
    so no request is made (and none retried); restored afterwards."""
    import datasets
    from huggingface_hub import constants

    flags = [(datasets.config, n) for n in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if hasattr(datasets.config, n)]
    flags.append((constants, "HF_HUB_OFFLINE"))
    saved = [getattr(owner, n) for owner, n in flags]
    for owner, n in flags:
        setattr(owner, n, True)
    try:
        yield
    finally:
        for (owner, n), value in zip(flags, saved):
            setattr(owner, n, value)


def refuses_script(e: BaseException) -> bool:
    """`e` is datasets refusing to run a loading script (any release from 2.20 on)."""
    return (isinstance(e, RuntimeError) and _NO_SCRIPTS in str(e)) or (isinstance(e, ValueError) and _REMOTE_CODE in str(e))


def _load(path: str, *, revision: str | None, **kw):
    if is_hub_id(path):
        why = hub_unreachable()
        if why is not None:
            return _load_cached(path, why, revision=revision, **kw)
    return _load_online(path, revision=revision, **kw)


def _load_cached(path: str, why: str, *, revision: str | None, **kw):
    """The hub out of reach: the local cache's copy (a prepared split: a stream would need the hub), or one line."""
    import datasets

    try:
        with _offline():
            return datasets.load_dataset(path, revision=revision, **{**kw, "streaming": False})
    except Exception:  # noqa: BLE001 - not in the cache, in whatever words this datasets release uses
        raise AssetError(f"dataset.path={path} is on the Hugging Face hub, which is not reachable from here ({why}), "
                         f"and its split {kw.get('split')!r} is not in the local cache; download it where the hub "
                         f"is reachable and pass the files: {LOCAL_FILES}; or use dataset=gutenberg "
                         "(offline)") from None


def _load_online(path: str, *, revision: str | None, **kw):
    import datasets

    try:
        return datasets.load_dataset(path, revision=revision, **kw)
    except Exception as e:  # noqa: BLE001 - network, missing split, bad files, scripts: each ends in one line
        if refuses_script(e) and revision is None:
            try:
                return datasets.load_dataset(path, revision=PARQUET_REVISION, **kw)
            except Exception as e2:  # noqa: BLE001
                raise AssetError(
                    f"dataset {path!r} is a loading script, which datasets {datasets.__version__} does not run, and "
                    f"its parquet export ({PARQUET_REVISION}) could not be loaded ({type(e2).__name__}: "
                    f"{_first_line(e2)}); point dataset.path at a parquet copy (for PG-19: emozilla/pg19, what "
                    "dataset=pg19 uses)") from None
        hint = ("check dataset.path/split and network access to the Hugging Face hub, or use dataset=gutenberg "
                "(offline)" if is_hub_id(path) else "check dataset.path, dataset.data_files and dataset.split")
        raise AssetError(f"could not load dataset {path!r} split {kw.get('split')!r} "
                         f"({type(e).__name__}: {_first_line(e)}); {hint}") from None


def _guarded(rows: Iterable[Mapping[str, Any]], path: str, split: str) -> Iterator[Mapping[str, Any]]:
    """A streamed split fetches as it goes: a failure midway is the same one line as at the start."""
    try:
        yield from rows
    except Exception as e:  # noqa: BLE001
        raise AssetError(f"reading dataset {path!r} split {split!r} failed midway ({type(e).__name__}: "
                         f"{_first_line(e)}); check network access to the Hugging Face hub, or set "
                         "dataset.streaming=false to download the split first") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]
