"""PG-19 prompts as in the paper: each book's text cut to `prefill` tokens.

The source is any dataset with deepmind/pg19's columns (conf/dataset/pg19.yaml reads the parquet
copy emozilla/pg19; deepmind/pg19's loading script goes through data/hub.py's fallback). The
paper's `gs` set is the first 20 books of the test split (`num_samples: 20`); `num_samples: null`
takes the whole split (100 test books).
"""

from __future__ import annotations

from typing import Iterator, Mapping

from triforce.data.hub import iter_records
from triforce.data.prompts import Sample, book_prompt
from triforce.data.tokenizers import Tokenizer


def pg19_samples(cfg: Mapping, tokenizer: Tokenizer) -> Iterator[Sample]:
    rows = iter_records(cfg["path"], split=cfg.get("split", "test"), name=cfg.get("subset"),
                        data_files=cfg.get("data_files"), revision=cfg.get("revision"),
                        streaming=cfg.get("streaming", True), limit=cfg.get("num_samples"))
    for i, row in enumerate(rows):
        title = row.get("short_book_title") or f"book {i}"
        yield Sample(id=str(row.get("url") or i), title=str(title),
                     prompt_ids=book_prompt(tokenizer, row["text"], cfg["prefill"]))
