"""Load a Hugging Face dataset split for prompt construction, with errors a user can act on.

`path` is anything `datasets.load_dataset` takes: a hub id (`deepmind/pg19`) or a packaged
builder (`parquet`, `json`) with `data_files` — the tests build small local datasets that way and
go through exactly the same code path as the hub.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Mapping

from triforce.errors import AssetError

_NO_SCRIPTS = "scripts are no longer supported"
PARQUET_REVISION = "refs/convert/parquet"


def iter_records(path: str, *, split: str, name: str | None = None, data_files: Any = None,
                 revision: str | None = None, streaming: bool = True,
                 limit: int | None = None) -> Iterator[Mapping[str, Any]]:
    """Rows of one split (the first `limit` of them), streamed unless `streaming` is false."""
    rows = _load(path, split=split, name=name, data_files=data_files, revision=revision, streaming=streaming)
    return itertools.islice(iter(rows), limit)


def _load(path: str, *, revision: str | None, **kw):
    import datasets

    try:
        return datasets.load_dataset(path, revision=revision, **kw)
    except RuntimeError as e:
        # datasets >= 4 no longer runs loading scripts; the hub's parquet export usually exists.
        if _NO_SCRIPTS in str(e) and revision is None:
            try:
                return datasets.load_dataset(path, revision=PARQUET_REVISION, **kw)
            except Exception as e2:
                raise AssetError(f"dataset {path!r} is script-based and its parquet export "
                                 f"({PARQUET_REVISION}) could not be loaded ({_first_line(e2)}); point "
                                 "dataset.path at a parquet copy (for PG-19: emozilla/pg19)") from None
        raise AssetError(f"could not load dataset {path!r} split {kw.get('split')!r}: {_first_line(e)}") from None
    except Exception as e:  # network, missing split, bad files: the same advice for all
        raise AssetError(f"could not load dataset {path!r} split {kw.get('split')!r} "
                         f"({type(e).__name__}: {_first_line(e)}); check dataset.path/split and network "
                         "access to the Hugging Face hub, or use dataset=gutenberg (offline)") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]
