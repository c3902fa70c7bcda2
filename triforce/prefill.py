"""Prefill: how a level's cache takes one sequence's prompt. The caches store, select and move KV;
this module runs the model over them (docs/DESIGN.md §4).

What each kind of cache asks of it (its contract, cache/static.py):

- a selection (`cache.selects`: retrieval, hybrid, the middle's StreamingLLM selection) is taken
  from the full cache that holds the prompt: `cache.rebuild(source)`, no forward at all;
- an offloaded cache (`cache.layer_major`) is filled layer by layer (below);
- every other cache takes the spans of the prompt it keeps (`cache.kept_spans`: a StreamingLLM
  cache only its sink and its last `window` tokens, the rest counted as seen with `skip`),
  token-major, in chunks of `chunk` tokens (or the cache's `max_step_tokens`).

**Layer-major prefill.** The usual (token-major) prefill runs a chunk through all layers, then the
next chunk: with an offloaded cache every chunk would stream every layer's growing prefix in from
host memory, so the bytes moved grow with the square of the prompt (the reference implementation
reloads every layer for each 128-token chunk). Layer-major, a layer's keys and values stay in its
device staging buffer while all its chunks run and each token's keys and values cross the host
link once, back to host memory: the traffic is linear in the prompt. The price is the whole
prompt's hidden state in device memory, twice (in and out: 2 x prompt x hidden, 2 GB for a 7B
model at 120K). The same layers, chunks, masks and rotary tables as token-major prefill: the same
cache contents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from triforce.kernels.policy import KernelContext
    from triforce.models.llama import Transformer

Report = Callable[[int, int], None]


def absorb(model: "Transformer", cache, tokens: torch.Tensor, upto: int, *, chunk: int | None = None,
           source=None, report: Report | None = None, kernels: "KernelContext | None" = None) -> None:
    """Prefill one sequence: `cache` (a row view, or a one-sequence cache) takes tokens[seq_len:upto]
    of its 1-D token buffer; a selection takes them from `source` (the full cache that absorbed
    them). report(done, total) after each forward; `kernels`: the policy's launch context for the
    model's forwards (None: the torch reference)."""
    if cache.selects:
        if source is None:
            raise ValueError("a selection cache takes a prompt from the full cache that holds it (source=...)")
        cache.rebuild(source)
        return
    if cache.seq_len >= upto:
        return
    if report is not None:
        report(cache.seq_len, upto)
    if cache.layer_major:
        start, layers = cache.seq_len, len(model.layers)

        def layer_done(i: int) -> None:
            if report is not None:
                report(start + (upto - start) * (i + 1) // layers, upto)

        layer_major_prefill(model, tokens[start:upto][None], cache, chunk, layer_done, kernels=kernels)
        return
    step = cache.max_step_tokens or chunk or upto
    for first, end in cache.kept_spans(upto):
        if first > cache.seq_len:  # tokens the cache would drop: counted as seen, never computed
            cache.skip(first - cache.seq_len)
        while cache.seq_len < end:
            stop = min(end, cache.seq_len + step)
            model(tokens[cache.seq_len:stop][None], None, cache, num_logits=1, kernels=kernels)
            if report is not None:
                report(cache.seq_len, upto)


@torch.inference_mode()
def layer_major_prefill(model: "Transformer", tokens: torch.Tensor, cache, chunk: int | None,
                        on_layer: Callable[[int], None] | None = None, *,
                        kernels: "KernelContext | None" = None) -> torch.Tensor:
    """Absorb tokens (1, n) into `cache` (an OffloadedKVCache: it must not prefetch the next
    layer, which is not computed yet); the logits of the last token (1, 1, V). `on_layer(i)` is
    called after layer i (progress)."""
    n = tokens.shape[1]
    chunk = min(chunk or n, n)
    base = cache.length
    positions = torch.arange(base, base + n, device=tokens.device)
    spans = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]
    x = model.embed(tokens, kernels)
    x_out = torch.empty_like(x)
    cache.prefetch = False
    try:
        for i, layer in enumerate(model.layers):
            for s, e in spans:
                cache.length = cache.seq_len = base + s
                x_out[:, s:e] = layer(x[:, s:e], model.context(cache, positions[s:e], e - s, x.dtype, kernels))
            x, x_out = x_out, x
            if on_layer is not None:
                on_layer(i)
    finally:
        cache.prefetch = True
    # the bookkeeping of the last chunk's forward (its recorded query rows), as token-major
    last = spans[-1][1] - spans[-1][0]
    cache.length = cache.seq_len = base + n - last
    cache.advance(last)
    return model.head(x, 1, kernels)
