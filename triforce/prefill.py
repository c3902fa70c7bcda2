"""Layer-major prefill: every chunk of the prompt through one layer, then the next layer.

The usual (token-major) prefill runs a chunk through all layers, then the next chunk: with an
offloaded cache every chunk would stream every layer's growing prefix in from host memory, so the
bytes moved grow with the square of the prompt (the reference implementation reloads every layer
for each 128-token chunk). Layer-major, a layer's keys and values stay in its device staging
buffer while all its chunks run and each token's keys and values cross the host link once, back
to host memory: the traffic is linear in the prompt. The price is the whole prompt's hidden state
in device memory, twice (in and out: 2 x prompt x hidden, 2 GB for a 7B model at 120K).

The same layers, chunks, masks and rotary tables as token-major prefill: the same cache contents.
"""

from __future__ import annotations

from typing import Callable

import torch

from triforce.models.llama import Transformer


@torch.inference_mode()
def layer_major_prefill(model: Transformer, tokens: torch.Tensor, cache, chunk: int | None,
                        on_layer: Callable[[int], None] | None = None) -> torch.Tensor:
    """Absorb tokens (1, n) into `cache` (an OffloadedKVCache: it must not prefetch the next
    layer, which is not computed yet); the logits of the last token (1, 1, V). `on_layer(i)` is
    called after layer i (progress)."""
    n = tokens.shape[1]
    chunk = min(chunk or n, n)
    base = cache.length
    positions = torch.arange(base, base + n, device=tokens.device)
    spans = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]
    x = model.embed_tokens(tokens)
    x_out = torch.empty_like(x)
    cache.prefetch = False
    try:
        for i, layer in enumerate(model.layers):
            for s, e in spans:
                cache.length = cache.seq_len = base + s
                x_out[:, s:e] = layer(x[:, s:e], model.context(cache, positions[s:e], e - s, x.dtype))
            x, x_out = x_out, x
            if on_layer is not None:
                on_layer(i)
    finally:
        cache.prefetch = True
    # the bookkeeping of the last chunk's forward (its recorded query rows), as token-major
    last = spans[-1][1] - spans[-1][0]
    cache.length = cache.seq_len = base + n - last
    cache.advance(last)
    return model.head(x, 1)
