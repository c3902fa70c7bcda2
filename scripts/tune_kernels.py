"""Bandwidth of the decode kernels alone, over a few launch variants, on the GPU.

    python scripts/tune_kernels.py [--attention] [--linear]

Attention: a 7B layer (MHA, 32 heads) and an 8B layer (GQA, 8 KV heads) at 32K and 128K keys
with 1, 7 and 17 new tokens: the split-KV kernel over (splits, block, warps, stages) variants,
achieved bandwidth (KV bytes / time) as a share of the device-to-device copy bandwidth.
Linear: the 7B / 8B weight shapes at 1 to 17 rows: cuBLAS against the fused Triton kernel over
(block_n, block_k, warps, stages) variants, weight bytes / time as a share of copy bandwidth.
Times are medians of triton.testing.do_bench (which flushes the L2 cache between runs, as a
decode step finds it: the weights are far larger than L2).
"""

from __future__ import annotations

import argparse

import torch
import triton.testing

from triforce.bench.floors import copy_bandwidth
from triforce.kernels.decode_attention import default_num_splits
from triforce.kernels.triton_decode import decode_attention
from triforce.kernels.triton_linear import fused_linear


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3


def tune_attention(bw: float) -> None:
    for hq, hkv in ((32, 32), (32, 8)):
        for keys in (32768, 131072):
            k = torch.randn(1, hkv, keys + 64, 128, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            length = torch.tensor([keys], device="cuda")
            kv_bytes = 2 * hkv * keys * 128 * 2
            base = default_num_splits(hkv, 1, keys + 64, k.device)
            for t in (1, 7, 17):
                q = torch.randn(1, t, hq, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
                results = []
                for splits in (base // 2, base, base * 2):
                    for block_n, warps, stages in ((64, 4, 3), (64, 4, 4), (128, 8, 3), (64, 8, 3)):
                        s = bench(lambda: decode_attention(q, k, v, length, 0.088, splits, block_n=block_n,
                                                           num_warps=warps, num_stages=stages))
                        results.append((s, splits, block_n, warps, stages))
                default = next(r for r in results if r[1] == base and r[2:] == (64, 4, 3)) if t * hq // hkv <= 64 \
                    else next(r for r in results if r[1] == base and r[2:] == (64, 8, 3))
                best = min(results)
                print(f"attention hq={hq} hkv={hkv} keys={keys:6d} T={t:2d}: default {default[0] * 1e6:6.1f} us "
                      f"({kv_bytes / default[0] / bw:5.3f} of copy bw, splits={base}); best {best[0] * 1e6:6.1f} us "
                      f"({kv_bytes / best[0] / bw:5.3f}) splits={best[1]} block={best[2]} warps={best[3]} "
                      f"stages={best[4]}", flush=True)


def tune_linear(bw: float) -> None:
    shapes = {"qkv-7b": (12288, 4096), "o": (4096, 4096), "gate_up-7b": (22016, 4096), "down-7b": (4096, 11008),
              "lm_head-7b": (32000, 4096), "qkv-8b": (6144, 4096), "gate_up-8b": (28672, 4096),
              "down-8b": (4096, 14336), "lm_head-8b": (128256, 4096)}
    for name, (n, kdim) in shapes.items():
        w = torch.randn(n, kdim, device="cuda", dtype=torch.bfloat16) * 0.02
        for t in (1, 3, 7, 17):
            x = torch.randn(1, t, kdim, device="cuda", dtype=torch.bfloat16)
            cublas = bench(lambda: torch.nn.functional.linear(x, w))
            results = []
            designs = [(0, None), (1, None)] + ([(2, 1 if t == 1 else 4)] if t <= 3 else [])
            for design, block_m in designs:
                for block_n in (16, 32, 64, 128):
                    if triton.cdiv(n, block_n) < 64 or (design == 2 and block_n > 32):
                        continue
                    for block_k, warps, stages in ((128, 4, 4), (256, 4, 4), (256, 8, 3), (512, 4, 2), (1024, 8, 2)):
                        try:
                            s = bench(lambda: fused_linear(x, w, block_n=block_n, block_k=block_k, num_warps=warps,
                                                           num_stages=stages, design=design, block_m=block_m))
                        except Exception:  # noqa: BLE001 - a variant that does not fit the SM's resources
                            continue
                        results.append((s, design, block_n, block_k, warps, stages))
            best = min(results)
            wb = w.numel() * 2
            print(f"linear {name:11s} T={t:2d}: cublas {wb / cublas / bw:5.3f} ({cublas * 1e6:6.1f} us), "
                  f"best triton {wb / best[0] / bw:5.3f} ({best[0] * 1e6:6.1f} us) design={best[1]} block_n={best[2]} "
                  f"block_k={best[3]} warps={best[4]} stages={best[5]}", flush=True)


def tune_prologues(bw: float) -> None:
    """The fused step before a product (norm + residual, SwiGLU) against running it apart."""
    from triforce.kernels.activation import silu_mul
    from triforce.kernels.linear import linear, norm_linear, silu_linear
    from triforce.kernels.norm import rms_norm

    for name, (n, kdim, kind) in {"qkv-7b": (12288, 4096, "norm"), "gate_up-7b": (22016, 4096, "norm"),
                                  "down-7b": (4096, 11008, "silu"), "lm_head-7b": (32000, 4096, "norm")}.items():
        w = torch.randn(n, kdim, device="cuda", dtype=torch.bfloat16) * 0.02
        nw = torch.ones(kdim, device="cuda", dtype=torch.bfloat16)
        for t in (1, 7):
            x = torch.randn(1, t, 2 * kdim if kind == "silu" else kdim, device="cuda", dtype=torch.bfloat16)
            r = torch.randn(1, t, kdim, device="cuda", dtype=torch.bfloat16)
            if kind == "norm":
                fused = bench(lambda: norm_linear(x, r, nw, 1e-5, w))
                apart = bench(lambda: linear(rms_norm(x, nw, 1e-5, r)[0], w))
                cublas = bench(lambda: torch.nn.functional.linear(rms_norm(x, nw, 1e-5, r)[0], w))
            else:
                fused = bench(lambda: silu_linear(x, w))
                apart = bench(lambda: linear(silu_mul(x), w))
                cublas = bench(lambda: torch.nn.functional.linear(silu_mul(x), w))
            wb = w.numel() * 2
            print(f"prologue {kind:4s} {name:11s} T={t:2d}: fused {wb / fused / bw:5.3f} ({fused * 1e6:6.1f} us), "
                  f"triton apart {wb / apart / bw:5.3f} ({apart * 1e6:6.1f} us), cublas apart {wb / cublas / bw:5.3f} "
                  f"({cublas * 1e6:6.1f} us)", flush=True)


def tune_top_p() -> None:
    """The one-kernel sampling transform (32K vocabulary) over warps per program."""
    from triforce.kernels.triton_top_p import top_p_probabilities
    from triforce.sampling import SamplingParams, probabilities

    for rows in (1, 7):
        logits = torch.randn(rows, 32000, device="cuda", dtype=torch.bfloat16) * 3
        sort_path = bench(lambda: probabilities(logits[:, :32000].float().contiguous().repeat(1, 2)[:, :40000],
                                                SamplingParams(0.6, 0.9)))
        times = {w: bench(lambda: top_p_probabilities(logits, 0.6, 0.9, num_warps=w)) for w in (4, 8, 16, 32)}
        print(f"top_p rows={rows}: " + ", ".join(f"{w} warps {t * 1e6:5.1f} us" for w, t in times.items())
              + f"; sort path (40K vocab) {sort_path * 1e6:5.1f} us", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attention", action="store_true")
    ap.add_argument("--linear", action="store_true")
    ap.add_argument("--prologues", action="store_true")
    ap.add_argument("--top-p", action="store_true")
    args = ap.parse_args()
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    everything = not (args.attention or args.linear or args.prologues or args.top_p)
    if args.top_p or everything:
        tune_top_p()
    if args.prologues or everything:
        tune_prologues(bw)
    if args.linear or everything:
        tune_linear(bw)
    if args.attention or everything:
        tune_attention(bw)


if __name__ == "__main__":
    main()
