"""End to end on real weights at long context: SmolLM2-135M stretched with YaRN to 64K / 128K.

The prompt is Project Gutenberg text (the fetched books, concatenated in name order until the
context is reached). Autoregressive decoding, TriForce (SmolLM2 drafting for itself with a
StreamingLLM cache, retrieval middle) and retrieval-only self-speculation run the same prompt
with the same seed; wall ms per token, speedup over autoregressive, acceptance per level.
"""

from __future__ import annotations

import math

import torch

from triforce.bench.latency import end_to_end
from triforce.data.gutenberg import load_books
from triforce.config import MethodConfig
from triforce.models import load_model, load_tokenizer
from triforce.sampling import SamplingParams

ORIGINAL_CONTEXT = 8192  # SmolLM2's trained context


def gutenberg_prompt(tokenizer, length: int) -> list[int]:
    ids: list[int] = []
    for book in load_books():
        ids += tokenizer(book.text, add_special_tokens=not ids)["input_ids"]
        if len(ids) >= length:
            return ids[:length]
    raise ValueError(f"the fetched Gutenberg books hold only {len(ids)} tokens, fewer than {length}")


def smollm2_end_to_end(model: str, contexts: list[int], *, new_tokens: int, budget: int,
                       sampling: SamplingParams, methods: tuple[str, ...] = ("triforce", "retrieval_spec")) -> list[dict]:
    rows = []
    tokenizer = load_tokenizer(model)
    for context in contexts:
        factor = 2 ** math.ceil(math.log2((context + new_tokens + 64) / ORIGINAL_CONTEXT))
        target = load_model(model, dtype="bfloat16", device="cuda",
                            rope_scaling={"rope_type": "yarn", "factor": float(factor),
                                          "original_max_position_embeddings": ORIGINAL_CONTEXT})
        prompt = gutenberg_prompt(tokenizer, context)
        base = end_to_end(target, None, MethodConfig(name="autoregressive"), prompt, new_tokens=new_tokens,
                          sampling=sampling, prefill_chunk=16384)
        rows.append(dict(model="SmolLM2-135M", yarn_factor=factor, **base, speedup=1.0))
        for name in methods:
            m = MethodConfig(name=name, budget=budget, chunk_size=8, gamma=6, draft_gamma=2)
            row = end_to_end(target, target if m.uses_draft else None, m, prompt, new_tokens=new_tokens,
                             sampling=sampling, prefill_chunk=16384)
            rows.append(dict(model="SmolLM2-135M", yarn_factor=factor, **row,
                             speedup=base["ms_per_token"] / row["ms_per_token"]))
        del target
        torch.cuda.empty_cache()
    return rows
