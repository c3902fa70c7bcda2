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
  does; the default (neither): small ones do (KernelPolicy.fuses_prologue);
- `slices pP capC`: attention with P programs per SM for the 64-row tile, at most C key slices per
  KV head (KernelPolicy.attention_launch).

Each variant is a KernelPolicy (kernels/policy.py) the levels are built with: nothing is patched.

Prints one table per shape and context: ms per forward and the ratio to the floor, per level.
"""

from __future__ import annotations

import argparse

import torch

from triforce.bench.latency import Card, free_memory, level_timings
from triforce.bench.shapes import DRAFT_OF, SHAPES, random_model
from triforce.config import MethodConfig
from triforce.kernels.policy import KernelPolicy

PAPER = MethodConfig(name="triforce", budget=4096, chunk_size=8, gamma=6, draft_gamma=2)
FUSED, APART = 1 << 40, 0  # weight bytes below which a one-row product fuses its prologue
# name: the policy fields the variant changes (everything else: the device's resolved policy)
VARIANTS = {
    "plain+fused": dict(pdl=False, linear_prefetch=0, attention_prefetch=0, fuse_prologue_small_bytes=FUSED),
    "plain": dict(pdl=False, linear_prefetch=0, attention_prefetch=0),
    "pdl+fused": dict(linear_prefetch=0, attention_prefetch=0, fuse_prologue_small_bytes=FUSED),
    "pdl": dict(linear_prefetch=0, attention_prefetch=0),
    "pdl+prefetch16/16+fused": dict(fuse_prologue_small_bytes=FUSED),
    "pdl+prefetch16/16+apart": dict(fuse_prologue_small_bytes=APART),
    "pdl+prefetch16/16": dict(),
    "pdl+prefetch16/16+nosplit": dict(split_k_choices=(1,)),
    "pdl+prefetch16/16+nofold": dict(fold_norm=False),
    "pdl+prefetch16/16+foldmulti": dict(fold_norm_min_rows=2),
    "pdl+prefetch32/16": dict(linear_prefetch=32 * 1024),
    "pdl+prefetch8/8": dict(linear_prefetch=8 * 1024, attention_prefetch=8 * 1024),
    # attention key slices (KernelPolicy.attention_launch): programs per SM for the 64-row tile, slice cap
    "slices p1 cap16": dict(attention_programs_per_sm=1, attention_max_slices=16),
    "slices p2 cap16": dict(attention_programs_per_sm=2, attention_max_slices=16),
    "slices p2 cap32": dict(attention_programs_per_sm=2, attention_max_slices=32),
    "slices p3 cap48": dict(attention_programs_per_sm=3, attention_max_slices=48),
}


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
    base = KernelPolicy.resolve("cuda")
    print(f"{card.name}: copy bandwidth {card.bandwidth / 1e12:.2f} TB/s; policy {base.describe()}", flush=True)
    for shape in args.shapes.split(","):
        target = random_model(SHAPES[shape], dtype=torch.bfloat16, device="cuda")
        draft = random_model(SHAPES[DRAFT_OF[shape]], dtype=torch.bfloat16, device="cuda", seed=1)
        for context in (int(c) for c in args.contexts.split(",")):
            table: dict[str, dict[str, tuple[float, float]]] = {}
            for name in names:
                policy = base.with_(**VARIANTS[name])
                rows = level_timings(target, draft, PAPER, context, verify_blocks=(7, 17),
                                     bandwidth=card.bandwidth, repeats=args.repeats, hardware={"kernels": policy})
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
