"""NarrativeQA (deepmind/narrativeqa) prompts for LWM-Text-Chat: each distinct book or script,
cut so that the LWM chat prompt around it (docs/DESIGN.md §2) is exactly `prefill` tokens.

Rows are questions; several share one document, so documents are deduplicated by id.
"""

from __future__ import annotations

from typing import Iterator, Mapping

from triforce.data.hub import iter_records
from triforce.data.prompts import LWM_PREFIX, LWM_SUFFIX, Sample, chat_prompt
from triforce.data.tokenizers import Tokenizer


def narrativeqa_samples(cfg: Mapping, tokenizer: Tokenizer) -> Iterator[Sample]:
    rows = iter_records(cfg["path"], split=cfg.get("split", "test"), name=cfg.get("subset"),
                        data_files=cfg.get("data_files"), revision=cfg.get("revision"),
                        streaming=cfg.get("streaming", True))
    wanted, seen = cfg.get("num_samples"), set()
    for row in rows:
        if wanted is not None and len(seen) >= wanted:
            return
        doc = row["document"]
        if doc["id"] in seen:
            continue
        seen.add(doc["id"])
        title = (doc.get("summary") or {}).get("title") or doc["id"]
        yield Sample(id=str(doc["id"]), title=str(title),
                     prompt_ids=chat_prompt(tokenizer, doc["text"], cfg["prefill"],
                                            prefix=cfg.get("prompt_prefix") or LWM_PREFIX,
                                            suffix=cfg.get("prompt_suffix") or LWM_SUFFIX))
