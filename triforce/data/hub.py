"""Load a Hugging Face dataset split for prompt construction, with errors a user can act on.

`path` is anything `datasets.load_dataset` takes: a hub id (`emozilla/pg19`) or a packaged
builder (`parquet`, `json`) with `data_files` — the tests build small local datasets that way and
go through exactly the same code path as the hub.

A script-based dataset (`deepmind/pg19`) is refused by every `datasets` the project allows:
>= 4 no longer runs loading scripts (RuntimeError "Dataset scripts are no longer supported"),
2.20-3.x ask for `trust_remote_code=True` (a ValueError, after an interactive prompt on a
terminal). Either way the hub's parquet export of the repo (`refs/convert/parquet`) is tried
next, which needs no code to run; where there is none, the error names a parquet copy.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, Mapping

from triforce.errors import AssetError

_NO_SCRIPTS = "scripts are no longer supported"  # datasets >= 4
_REMOTE_CODE = "trust_remote_code"  # datasets 2.20-3.x: each of its refusals names the option
PARQUET_REVISION = "refs/convert/parquet"


def iter_records(path: str, *, split: str, name: str | None = None, data_files: Any = None,
                 revision: str | None = None, streaming: bool = True,
                 limit: int | None = None) -> Iterator[Mapping[str, Any]]:
    """Rows of one split (the first `limit` of them), streamed unless `streaming` is false."""
    rows = _load(path, split=split, name=name, data_files=data_files, revision=revision, streaming=streaming)
    return _guarded(itertools.islice(iter(rows), limit), path, split)


def refuses_script(e: BaseException) -> bool:
    """`e` is datasets refusing to run a loading script (any release from 2.20 on)."""
    return (isinstance(e, RuntimeError) and _NO_SCRIPTS in str(e)) or (isinstance(e, ValueError) and _REMOTE_CODE in str(e))


def _load(path: str, *, revision: str | None, **kw):
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
        raise AssetError(f"could not load dataset {path!r} split {kw.get('split')!r} "
                         f"({type(e).__name__}: {_first_line(e)}); check dataset.path/split and network "
                         "access to the Hugging Face hub, or use dataset=gutenberg (offline)") from None


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
