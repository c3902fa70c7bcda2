"""NarrativeQA (deepmind/narrativeqa) prompts: each chosen book or script, cut so that the chat
prompt around it is exactly `prefill` tokens — the model's own chat template where its tokenizer
has one (Qwen2.5/Qwen3/Mistral/Llama-3.1 Instruct: `dataset.chat_template: auto`), else the LWM
chat prompt the paper uses for LWM-Text-Chat (docs/DESIGN.md §2; `chat_template: lwm` always).

Rows are questions and several share one document. `rows` picks documents by row index, as the
reference does (Infini-AI-Lab/TriForce, data/dataset.py, its `lwm` set: 20 fixed rows of the
train split, each document's text from its 4th character on); `rows: null` takes the first
`num_samples` distinct documents of the split instead.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Sequence

from triforce.data.hub import iter_records
from triforce.data.prompts import LWM_PREFIX, LWM_SUFFIX, Sample, chat_prompt, has_chat_template, template_prompt
from triforce.data.tokenizers import Tokenizer
from triforce.errors import ConfigError


def narrativeqa_samples(cfg: Mapping, tokenizer: Tokenizer) -> Iterator[Sample]:
    rows = iter_records(cfg["path"], split=cfg.get("split", "test"), name=cfg.get("subset"),
                        data_files=cfg.get("data_files"), revision=cfg.get("revision"),
                        streaming=cfg.get("streaming", True))
    indices, wanted = cfg.get("rows"), cfg.get("num_samples")
    documents = (pick_rows(rows, indices[:wanted]) if indices is not None else distinct_documents(rows, wanted))
    start = int(cfg.get("text_start") or 0)
    own = (cfg.get("chat_template") or "auto") == "auto" and has_chat_template(tokenizer) and not cfg.get("prompt_prefix")
    for doc in documents:
        title = (doc.get("summary") or {}).get("title") or doc["id"]
        book = doc["text"][start:]
        ids = (template_prompt(tokenizer, book, cfg["prefill"]) if own else
               chat_prompt(tokenizer, book, cfg["prefill"], prefix=cfg.get("prompt_prefix") or LWM_PREFIX,
                           suffix=cfg.get("prompt_suffix") or LWM_SUFFIX))
        yield Sample(id=str(doc["id"]), title=str(title), prompt_ids=ids)


def distinct_documents(rows: Iterable[Mapping], wanted: int | None) -> Iterator[Mapping]:
    """The documents of the first rows, each once, until `wanted` (None: all)."""
    seen = set()
    for row in rows:
        if wanted is not None and len(seen) >= wanted:
            return
        doc = row["document"]
        if doc["id"] not in seen:
            seen.add(doc["id"])
            yield doc


def pick_rows(rows: Iterable[Mapping], indices: Sequence[int]) -> list[Mapping]:
    """The documents of rows `indices` of the split, in that order; the split is read (streamed)
    only up to the largest index."""
    if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in indices):
        raise ConfigError(f"dataset.rows={list(indices)} must be row indices (integers >= 0) or null")
    wanted, found, n = set(indices), {}, 0
    for n, row in enumerate(rows, 1):
        if n - 1 in wanted:
            found[n - 1] = row["document"]
            if len(found) == len(wanted):
                break
    missing = sorted(wanted - set(found))
    if missing:
        raise ConfigError(f"dataset.rows: the split has only {n} rows, so rows {missing} do not exist; "
                          "check dataset.split or set dataset.rows=null (the first distinct documents)")
    return [found[i] for i in indices]
