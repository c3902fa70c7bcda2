"""The full KV cache offloaded to host memory: the paper's consumer-GPU mode.

Weights, the draft and the retrieval cache stay on the GPU; the full cache's keys and values live
in pinned host memory (all layers but the first `on_chip_layers`, which stay on the GPU). Only
the top level reads this cache, once per verification, so only verification (and the
autoregressive baseline) pays the host link.

A forward streams each offloaded layer's valid prefix host -> device into one of two device
staging buffers, on a copy stream, while the previous layer computes (double buffering): the
first offloaded layer is requested when the forward starts (`attention_mask` is called once per
forward, before any layer), layer i + 1 when layer i writes its new keys. The new tokens' keys
and values are written into the staging buffer and copied back to host memory on the copy
stream, so host memory holds every token the cache has absorbed and a rolled-back token is
simply overwritten later. A staging buffer remembers which layer and how many tokens it holds:
a layer-major prefill (prefill.py), which runs every chunk of one layer before the next layer,
finds its prefix already there and moves each token's keys and values across the link once.

Retrieval rebuilds do not stream the keys: told that a selection will score its chunks
(`serves`), the cache keeps each complete chunk's statistics (`chunks.chunk_stats`, in the
cache's dtype) on the GPU, computed from the staging buffer when the chunk's last token is written
(a chunk rewritten after a rollback is recomputed then); the selection chooses from them
(`chunk_statistics`), and only the chosen tokens are copied from host memory (`gather`).

On a CPU (tests) the same code runs with host and "device" both in CPU memory and synchronous
copies. It is never captured in a CUDA graph: its copies vary in length (`capturable`). A batch
runs its forwards one sequence at a time (`row(b)`: each sequence streams its own prefix; the
host link, not the weights, bounds such a step).
"""

from __future__ import annotations

import torch

from triforce.cache.chunks import chunk_stats
from triforce.cache.static import StaticKVCache, kv_bytes_per_token, per_row, query_bytes

STAGES = 2  # staging buffers: one layer computes while the next streams in


class OffloadedKVCache(StaticKVCache):
    capturable = False
    layer_major = True  # prefill.py fills it layer by layer: each token crosses the host link once
    snapshots = False  # an offloaded prefill is not kept: a second host copy of tens of GB
    resident = per_row("resident", "per staging buffer: (layer, valid tokens) it holds of this sequence")

    def __init__(self, *, on_chip_layers: int = 0, **kw):
        self.on_chip = on_chip_layers
        super().__init__(**kw)
        # bytes moved host -> device and back since the cache was made (shared by the row views)
        self._traffic = {"h2d": 0, "d2h": 0}
        self._state.values["resident"] = [[(-1, 0)] * len(self.stage_k) for _ in self.rows]
        self.stats: torch.Tensor | None = None
        self.stats_chunk, self.stats_scorer = 0, ""
        self.prefetch = True  # off during a layer-major prefill: the next layer is not computed yet

    @classmethod
    def for_model(cls, cfg, capacity: int, dtype: torch.dtype, device, *, on_chip_layers: int = 0,
                  **kw) -> "OffloadedKVCache":
        return cls(num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                   num_heads=cfg.num_heads, capacity=capacity, dtype=dtype, device=device,
                   on_chip_layers=min(on_chip_layers or 0, cfg.num_layers), **kw)

    def _allocate(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        layers, rest = shape[0], shape[1:]
        cuda = self.device.type == "cuda"
        self.k = torch.zeros((self.on_chip, *rest), dtype=dtype, device=self.device)  # on-chip layers
        self.v = torch.zeros((self.on_chip, *rest), dtype=dtype, device=self.device)
        host = (layers - self.on_chip, *rest)
        self.k_host = torch.zeros(host, dtype=dtype, pin_memory=cuda)
        self.v_host = torch.zeros(host, dtype=dtype, pin_memory=cuda)
        staged = STAGES if layers > self.on_chip else 0
        self.stage_k = [torch.zeros(rest, dtype=dtype, device=self.device) for _ in range(staged)]
        self.stage_v = [torch.zeros(rest, dtype=dtype, device=self.device) for _ in range(staged)]
        self.copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self.ready = [torch.cuda.Event() if cuda else None for _ in range(staged)]
        self.num_layers = layers

    @classmethod
    def memory(cls, cfg, tokens: int, dtype_bytes: int, *, on_chip_layers: int = 0,
               chunk_size: int | None = None, scorer: str = "mean") -> dict[str, int]:
        """The offloaded layers in pinned host memory; on the device the on-chip layers, two staging
        buffers, the recorded queries and (`chunk_size`: a selection scores this cache) the chunk
        statistics of the offloaded layers."""
        layer_kv = tokens * kv_bytes_per_token(cfg, dtype_bytes) // cfg.num_layers
        on_chip = min(on_chip_layers or 0, cfg.num_layers)
        offloaded = cfg.num_layers - on_chip
        device = (on_chip + min(offloaded, 2)) * layer_kv + query_bytes(cfg, dtype_bytes)
        if chunk_size:
            slots = 1 if scorer == "mean" else 2
            device += offloaded * cfg.num_kv_heads * (tokens // chunk_size) * slots * cfg.head_dim * dtype_bytes
        return {"device": device, "host": offloaded * layer_kv}

    # -- the engine-facing contract -------------------------------------------------------------
    def serves(self, chunk_size: int, scorer: str) -> None:
        """Keep the statistics `scorer` reads of every complete chunk of `chunk_size` tokens of the
        offloaded layers (before the prefill): a selection then chooses without streaming keys."""
        self.track_chunks(chunk_size, scorer)

    def traffic(self) -> dict[str, int]:
        return dict(self._traffic)

    @property
    def bytes_h2d(self) -> int:
        return self._traffic["h2d"]

    @bytes_h2d.setter
    def bytes_h2d(self, value: int) -> None:
        self._traffic["h2d"] = value

    @property
    def bytes_d2h(self) -> int:
        return self._traffic["d2h"]

    @bytes_d2h.setter
    def bytes_d2h(self, value: int) -> None:
        self._traffic["d2h"] = value

    def _row_storage(self, view: "OffloadedKVCache", b: int) -> None:
        super()._row_storage(view, b)
        view.k_host, view.v_host = self.k_host[:, b:b + 1], self.v_host[:, b:b + 1]
        view.stage_k = [s[b:b + 1] for s in self.stage_k]
        view.stage_v = [s[b:b + 1] for s in self.stage_v]
        if self.stats is not None:
            view.stats = self.stats[:, b:b + 1]

    # -- chunk statistics for retrieval rebuilds ------------------------------------------------
    def track_chunks(self, chunk_size: int, scorer: str) -> None:
        """Keep the statistics `scorer` reads of every complete chunk of `chunk_size` tokens of the
        offloaded layers (call before the prefill)."""
        L, B, H, C, D = self.k_host.shape
        self.__dict__.pop("_views", None)  # row views made before see the statistics too
        slots = 1 if scorer == "mean" else 2
        self.stats = torch.zeros((L, B, H, C // chunk_size, slots, D), dtype=self.k_host.dtype,
                                 device=self.device)
        self.stats_chunk, self.stats_scorer = chunk_size, scorer

    def _update_stats(self, host_layer: int, keys: torch.Tensor, start: int, end: int) -> None:
        if self.stats is None:
            return
        cs = self.stats_chunk
        first, last = start // cs, end // cs  # complete chunks touched by [start, end)
        if last > first:
            self.stats[host_layer, :, :, first:last] = chunk_stats(keys[:, :, first * cs:last * cs], cs,
                                                                   self.stats_scorer).to(self.stats.dtype)

    def chunk_statistics(self, layer: int, chunks: int, chunk_size: int, scorer: str) -> torch.Tensor:
        if layer < self.on_chip:
            return super().chunk_statistics(layer, chunks, chunk_size, scorer)
        if self.stats is None or (chunk_size, scorer) != (self.stats_chunk, self.stats_scorer):
            raise RuntimeError("an offloaded cache gives the chunk statistics it keeps: tell it what a selection "
                               "scores (serves(chunk_size, scorer)) before the prefill")
        return self.stats[layer - self.on_chip, :, :, :chunks]

    def gather(self, layer: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen tokens of an offloaded layer, copied from host memory to the device."""
        if layer < self.on_chip:
            return super().gather(layer, idx)
        h = layer - self.on_chip
        self._drain()  # host memory holds every written token
        idx_host = idx.cpu()
        index = idx_host[..., None].expand(*idx_host.shape, self.k_host.shape[-1])
        keys = torch.gather(self.k_host[h], 2, index)
        values = torch.gather(self.v_host[h], 2, index)
        self.bytes_h2d += 2 * keys.numel() * keys.element_size()
        cuda = self.device.type == "cuda"
        if cuda:
            keys, values = keys.pin_memory(), values.pin_memory()
        return keys.to(self.device, non_blocking=cuda), values.to(self.device, non_blocking=cuda)

    def keep_path(self, path: list[int] | tuple[int, ...], block: int) -> None:
        """StaticKVCache.keep_path over host memory too: the on-chip layers as there; each offloaded
        layer's path moved in host memory (after the copies back of the tree's keys have landed); a
        staging buffer keeps only what precedes the block (the next forward streams the path in); the
        chunk statistics of the chunks the path fills are recomputed from host memory."""
        start, n = self.length - block, len(path)
        super().keep_path(path, block)  # checks, on-chip layers, recorded queries, lengths
        if self.k_host.shape[0] == 0:
            return
        self._drain()
        idx = torch.tensor([start + i for i in path], dtype=torch.long)
        self.k_host[:, :, :, start:start + n] = self.k_host.index_select(3, idx)
        self.v_host[:, :, :, start:start + n] = self.v_host.index_select(3, idx)
        self.resident = [(layer, min(held, start)) for layer, held in self.resident]
        if self.stats is not None:
            cs = self.stats_chunk
            first, last = start // cs, (start + n) // cs  # complete chunks holding path tokens
            if last > first:
                keys = self.k_host[:, :, :, first * cs:last * cs].to(self.device)
                for h in range(keys.shape[0]):
                    self.stats[h, :, :, first:last] = chunk_stats(keys[h], cs, self.stats_scorer).to(self.stats.dtype)

    # -- the model-facing contract ----------------------------------------------------------
    def attention_mask(self, num_tokens: int, tree: torch.Tensor | None = None):
        if self.batch_size > 1:
            raise ValueError("an offloaded cache runs one sequence per forward: use row(b)")
        # a forward begins: start streaming the first offloaded layer under the on-chip ones
        if self.prefetch:
            self._request(self.on_chip)
        return super().attention_mask(num_tokens, tree)

    def write(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        if layer < self.on_chip:
            return super().write(layer, q, k, v)
        n = min(q.shape[2], self.recent_queries.shape[3])
        self.recent_queries[layer, :, :, :n] = q[:, :, -n:]
        start, end = self.length, self.length + k.shape[2]
        b = self._request(layer)
        if self.copy_stream is not None:
            torch.cuda.current_stream().wait_event(self.ready[b])
        keys, values = self.stage_k[b], self.stage_v[b]
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        self.resident[b] = (layer, end)
        self._update_stats(layer - self.on_chip, keys, start, end)
        self._copy_back(layer - self.on_chip, b, start, end)
        if self.prefetch:
            self._request(layer + 1)
        return keys[:, :, :end], values[:, :, :end]

    # -- streaming --------------------------------------------------------------------------
    def _request(self, layer: int) -> int:
        """Make sure the staging buffer of `layer` holds its first `length` tokens (or has the copy
        of the missing ones queued on the copy stream); its index. The buffer's `ready` event is
        recorded after everything queued on the copy stream, copies back of the layer that used
        the buffer before included: the compute stream waits on it before writing."""
        if not self.on_chip <= layer < self.num_layers:
            return -1
        b = (layer - self.on_chip) % STAGES
        held_layer, held = self.resident[b]
        have = min(held, self.length) if held_layer == layer else 0
        if have < self.length:
            h, n = layer - self.on_chip, self.length
            self._on_copy_stream(lambda: (_copy_tokens(self.stage_k[b], self.k_host[h], have, n),
                                          _copy_tokens(self.stage_v[b], self.v_host[h], have, n)))
            self.bytes_h2d += 2 * self._bytes(n - have)
            self.resident[b] = (layer, n)
        if self.copy_stream is not None:
            self.ready[b].record(self.copy_stream)
        return b

    def _copy_back(self, host_layer: int, b: int, start: int, end: int) -> None:
        self._on_copy_stream(lambda: (_copy_tokens(self.k_host[host_layer], self.stage_k[b], start, end),
                                      _copy_tokens(self.v_host[host_layer], self.stage_v[b], start, end)))
        self.bytes_d2h += 2 * self._bytes(end - start)

    def _on_copy_stream(self, copy) -> None:
        """Run `copy` after everything the compute stream has queued so far (a staging buffer is
        refilled only after the layer that used it has attended), without blocking it."""
        if self.copy_stream is None:
            copy()
            return
        self.copy_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.copy_stream):
            copy()

    def _drain(self) -> None:
        if self.copy_stream is not None:
            self.copy_stream.synchronize()

    def _bytes(self, tokens: int) -> int:
        _, B, H, _, D = self.k_host.shape
        return B * H * tokens * D * self.k_host.element_size()

    def reset(self) -> None:
        super().reset()
        self.resident = [(-1, 0)] * len(self.stage_k)


def _copy_tokens(dst: torch.Tensor, src: torch.Tensor, start: int, end: int) -> None:
    """dst[:, :, start:end] = src[:, :, start:end] for (B, H, capacity, D) buffers on two devices,
    asynchronously. A token range is contiguous within each head but not across heads, and
    torch copies a non-contiguous tensor between devices through a pageable temporary, in sync:
    so one copy per head, each a contiguous block the copy engine streams directly."""
    if end <= start:
        return
    if dst.device == src.device:
        dst[:, :, start:end].copy_(src[:, :, start:end])
        return
    for b in range(dst.shape[0]):
        for h in range(dst.shape[1]):
            dst[b, h, start:end].copy_(src[b, h, start:end], non_blocking=True)
