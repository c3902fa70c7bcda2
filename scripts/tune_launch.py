"""Whole-level timings over the decode kernels' launch options, on the GPU.

    python scripts/tune_launch.py [--shape llama3-8b] [--contexts 32768,65536] [--variants all]

The kernels' launch options act between kernels, so they are measured where kernels follow one
another: each level's captured forward (triforce.bench.latency.level_timings, as the latency
benchmark times it) against its byte floor, once per variant, graphs captured anew each time:

- `plain`: no programmatic dependent launch (PDL);
- `pdl`: PDL, nothing before each kernel's wait;
- `pdl+prefetch<L>/<A>`: + each program prefetching L KiB of its weight rows (linear) or A KiB of
  its key and of its value slice (attention) into L2 before its wait, i.e. while its predecessor's
  last programs run;
- `...+nosplit`: no split-K (every product one program per column tile);
- `...+nofold`: every RMSNorm between two products as a kernel of its own (not split across the
  products' epilogues: kernels.linear.PreNormed); `+foldmulti`: folded only for several rows;
- `...+fused`: every one-row product takes its RMSNorm / SwiGLU inside its kernel; `+apart`: none
  does; the default (neither): small ones do (kernels.linear.fuse_prologue).

Prints one table per shape and context: ms per forward and the ratio to the floor, per level.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from triforce.bench.latency import Card, free_memory, level_timings
from triforce.bench.shapes import DRAFT_OF, SHAPES, random_model
from triforce.engine import MethodConfig
from triforce import kernels
from triforce.kernels import linear, triton_decode, triton_linear, use_pdl

PAPER = MethodConfig(name="triforce", budget=4096, chunk_size=8, gamma=6, draft_gamma=2)
# name: (pdl, linear prefetch KiB, attention prefetch KiB, weight bytes below which a one-row product
# fuses its prologue, split-K choices, RMSNorm folded into the products around it)
FUSED, APART, SMALL = 1 << 40, 0, linear.FUSED_PROLOGUE_SMALL_BYTES
SPLIT, NO_SPLIT = triton_linear.SPLIT_K_CHOICES, (1,)
VARIANTS = {
    "plain+fused": (False, 0, 0, FUSED, SPLIT, True),
    "plain": (False, 0, 0, SMALL, SPLIT, True),
    "pdl+fused": (True, 0, 0, FUSED, SPLIT, True),
    "pdl": (True, 0, 0, SMALL, SPLIT, True),
    "pdl+prefetch16/16+fused": (True, 16, 16, FUSED, SPLIT, True),
    "pdl+prefetch16/16+apart": (True, 16, 16, APART, SPLIT, True),
    "pdl+prefetch16/16": (True, 16, 16, SMALL, SPLIT, True),
    "pdl+prefetch16/16+nosplit": (True, 16, 16, SMALL, NO_SPLIT, True),
    "pdl+prefetch16/16+nofold": (True, 16, 16, SMALL, SPLIT, False),
    "pdl+prefetch16/16+foldmulti": (True, 16, 16, SMALL, SPLIT, 2),
    "pdl+prefetch32/16": (True, 32, 16, SMALL, SPLIT, True),
    "pdl+prefetch8/8": (True, 8, 8, SMALL, SPLIT, True),
}


@contextlib.contextmanager
def variant(pdl: bool, linear_kib: int, attention_kib: int, small_bytes: int, split_choices: tuple[int, ...],
            fold: bool | int):
    saved = (kernels.PDL, triton_linear.PREFETCH_PER_PROGRAM, triton_decode.PREFETCH_PER_PROGRAM,
             linear.FUSED_PROLOGUE_SMALL_BYTES, triton_linear.SPLIT_K_CHOICES, linear.FOLD_NORM,
             linear.FOLD_NORM_MIN_ROWS)
    use_pdl(pdl)
    linear.FUSED_PROLOGUE_SMALL_BYTES = small_bytes
    triton_linear.PREFETCH_PER_PROGRAM = linear_kib * 1024
    triton_decode.PREFETCH_PER_PROGRAM = attention_kib * 1024
    triton_linear.SPLIT_K_CHOICES = split_choices
    linear.FOLD_NORM = bool(fold)
    linear.FOLD_NORM_MIN_ROWS = 1 if fold is True else int(fold)
    try:
        yield
    finally:
        use_pdl(saved[0])
        (triton_linear.PREFETCH_PER_PROGRAM, triton_decode.PREFETCH_PER_PROGRAM, linear.FUSED_PROLOGUE_SMALL_BYTES,
         triton_linear.SPLIT_K_CHOICES, linear.FOLD_NORM, linear.FOLD_NORM_MIN_ROWS) = saved[1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama3-8b")
    ap.add_argument("--contexts", default="32768,65536")
    ap.add_argument("--variants", default="all", help=f"comma-separated of {', '.join(VARIANTS)}")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}: choose from {list(VARIANTS)}")
    card = Card.measure()
    print(f"{card.name}: copy bandwidth {card.bandwidth / 1e12:.2f} TB/s", flush=True)
    for shape in args.shapes.split(","):
        target = random_model(SHAPES[shape], dtype=torch.bfloat16, device="cuda")
        draft = random_model(SHAPES[DRAFT_OF[shape]], dtype=torch.bfloat16, device="cuda", seed=1)
        for context in (int(c) for c in args.contexts.split(",")):
            table: dict[str, dict[str, tuple[float, float]]] = {}
            for name in names:
                with variant(*VARIANTS[name]):
                    rows = level_timings(target, draft, PAPER, context, verify_blocks=(7, 17),
                                         bandwidth=card.bandwidth, repeats=args.repeats)
                free_memory()
                for r in rows:
                    if r["level"] != "sampling transform":
                        table.setdefault(f"{r['level']} T={r['tokens']}", {})[name] = (r["ms"], r["ratio"])
            print(f"\n== {shape} at {context}: ms per forward (ratio to its floor)")
            print(f"| level | {' | '.join(names)} |")
            print(f"|---|{'---|' * len(names)}")
            for level, cells in table.items():
                print(f"| {level} | " + " | ".join(f"{cells[n][0]:.3f} ({cells[n][1]:.3f})" for n in names) + " |",
                      flush=True)
        del target, draft
        free_memory()


if __name__ == "__main__":
    main()
