"""Acceptance benchmark: SmolLM2 self-speculation on Gutenberg books (a script, not a test).

For every (prompt length, middle cache, budget, chunk size, gamma) it runs TriForce —
draft = SmolLM2 with a StreamingLLM cache, middle = SmolLM2 with the retrieval cache (or a
StreamingLLM cache of the same budget: the paper's ablation), top = SmolLM2 with the full
cache — on several books and reports acceptance per level and the mean accepted length
(tokens per top-level forward), averaged over books. The model loads once.

    python experiments/acceptance_benchmark.py                      # the full grid (GPU advised)
    python experiments/acceptance_benchmark.py --prompt-lens 1024 --budgets 256 --books 1 --new-tokens 16

Trees against chains (docs/DESIGN.md §13): `--method retrieval_spec --trees 4-2-1-1-1-1 ...` runs
the middle (the target over a retrieval, hybrid or StreamingLLM cache) as the proposer of each
gamma's chain and of each token tree, over several books and `--seeds`, so that what width buys on
real text is measured over many texts (a sampled run writes its own text: one run per method does
not compare them); the table adds the tree's acceptance by child rank.

    python experiments/acceptance_benchmark.py --method retrieval_spec --middle-caches hybrid --budgets 512 \
        --prompt-lens 2048 --gammas 6 --trees 4-2-1-1-1-1 --books 4 --seeds 0 1 2 --new-tokens 128

Prints a markdown table (last line: a JSON summary) and writes the per-run rows to --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from triforce.data.gutenberg import load_books
from triforce.config import MethodConfig
from triforce.engine import Engine
from triforce.models import load_model, load_tokenizer
from triforce.report import markdown_table
from triforce.tree import widths_of

DEFAULT_BOOKS = ["paradise_lost_(no_introduction)_gut", "hamlet_gut", "poetical_works_gut", "comus_gut"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt-lens", type=int, nargs="+", default=[4096, 8000])
    p.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--gammas", type=int, nargs="+", default=[4, 6])
    p.add_argument("--draft-gamma", type=int, default=2)
    p.add_argument("--method", choices=["triforce", "retrieval_spec"], default="triforce",
                   help="triforce: draft -> middle -> top; retrieval_spec: the middle proposes to the top")
    p.add_argument("--trees", nargs="*", default=[], metavar="WIDTHS",
                   help="retrieval_spec: token trees beside the chains, widths per depth as 4-2-1-1 (a tree's "
                        "middle is --middle-caches' first and --budgets' first)")
    p.add_argument("--middle-caches", nargs="+", default=["retrieval", "streaming"])
    p.add_argument("--draft-sink", type=int, default=16)
    p.add_argument("--draft-window", type=int, default=240)
    p.add_argument("--books", type=int, default=4, help="how many of the default books")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="each book is run once per seed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", type=Path, default=Path("outputs/acceptance_benchmark.csv"))
    return p.parse_args(argv)


def grid(args):
    for prompt_len, middle, budget, chunk, gamma in itertools.product(
            args.prompt_lens, args.middle_caches, args.budgets, args.chunk_sizes, args.gammas):
        if middle == "streaming" and chunk != args.chunk_sizes[0]:
            continue  # chunk size means nothing to a StreamingLLM middle
        yield prompt_len, middle, budget, chunk, gamma


def widths(text: str) -> tuple[int, ...]:
    try:
        return widths_of(text)
    except ValueError as e:
        sys.exit(f"error: --trees: {e}")


def configs_of(args) -> list[tuple[int, MethodConfig]]:
    """(prompt length, method) of every run, each checked before anything loads."""
    if args.trees and args.method != "retrieval_spec":
        sys.exit("error: --trees are retrieval_spec's: add --method retrieval_spec")
    extra = dict(draft_gamma=args.draft_gamma) if args.method == "triforce" else {}
    configs = []
    for prompt_len, middle, budget, chunk, gamma in grid(args):
        configs.append((prompt_len, MethodConfig(
            name=args.method, gamma=gamma, budget=budget, chunk_size=chunk, middle_cache=middle,
            draft_sink=args.draft_sink, draft_window=args.draft_window, **extra)))
    for prompt_len, tree in itertools.product(args.prompt_lens, [widths(t) for t in args.trees]):
        configs.append((prompt_len, MethodConfig(
            name=args.method, tree=tree, budget=args.budgets[0], chunk_size=args.chunk_sizes[0],
            middle_cache=args.middle_caches[0], draft_sink=args.draft_sink, draft_window=args.draft_window)))
    return configs


def main(argv=None) -> int:
    args = parse_args(argv)
    configs = configs_of(args)  # the whole grid validated before loading anything
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    tokenizer = load_tokenizer(args.model)
    books = load_books(names=DEFAULT_BOOKS[: args.books])
    tokens = {b.name: tokenizer(b.text)["input_ids"] for b in books}
    for prompt_len, _ in configs:
        short = [n for n, t in tokens.items() if len(t) < prompt_len]
        if short:
            sys.exit(f"error: books {short} have fewer than {prompt_len} tokens")
    sampling = {"temperature": args.temperature, "top_p": args.top_p}
    start = time.time()
    # The autoregressive baseline on the same prompts and card, for the latency column.
    baseline = Engine(model, None, {"name": "autoregressive"}, sampling)
    base_ms = {}
    for prompt_len in args.prompt_lens:
        runs = [baseline.generate(ids[:prompt_len], args.new_tokens, seed=args.seeds[0], stop_at_eos=False)
                for ids in tokens.values()]
        base_ms[prompt_len] = sum(r.metrics["ms_per_token"] for r in runs) / len(runs)
    rows = []
    for i, (prompt_len, method) in enumerate(configs):
        engine = Engine(model, model if method.uses_draft else None, method, sampling)
        shape = "-".join(map(str, method.tree)) if method.tree else f"chain {method.gamma}"
        for (name, ids), seed in itertools.product(tokens.items(), args.seeds):
            res = engine.generate(ids[:prompt_len], args.new_tokens, seed=seed, stop_at_eos=False)
            m = res.metrics
            rows.append(dict(prompt_len=prompt_len, middle=method.middle_cache, budget=method.budget,
                             chunk_size=method.chunk_size, proposal=shape, book=name, seed=seed,
                             accept_draft=m.get("accept_rate/draft", float("nan")),
                             accept_middle=m.get("accept_rate/middle", float("nan")),
                             mean_accepted_len=m["mean_accepted_len"], ms_per_token=m["ms_per_token"],
                             new_tokens=m["new_tokens"],
                             **{k.split("/")[1]: v for k, v in m.items() if k.startswith("tree/rank_accept_")}))
        print(f"[{i + 1}/{len(configs)}] {time.time() - start:.0f}s", file=sys.stderr, flush=True)

    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    keys = ["prompt_len", "middle", "budget", "chunk_size", "proposal"]
    measures = ["accept_draft", "accept_middle", "mean_accepted_len", "ms_per_token",
                *sorted(c for c in df.columns if c.startswith("rank_accept_"))]
    grouped = df.groupby(keys, sort=True)
    table = grouped[measures].mean().reset_index()
    # the spread over texts: a sampled run writes its own text, so one run says little on its own
    table["accepted_len_sd"] = grouped["mean_accepted_len"].std().values
    table["runs"] = grouped.size().values
    table["baseline_ms_per_token"] = table.prompt_len.map(base_ms)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\nSmolLM2-135M self-speculation ({args.method}), {len(tokens)} books x {len(args.seeds)} seeds, "
          f"{args.new_tokens} new tokens, T={args.temperature} top-p={args.top_p}, "
          + (f"draft cache {args.draft_sink}+{args.draft_window}, draft_gamma={args.draft_gamma}, "
             if args.method == "triforce" else "") + f"{args.dtype} on {device}\n")
    print(markdown_table(table))
    best = table.sort_values("mean_accepted_len").iloc[-1].to_dict()
    print(json.dumps({"runs": len(df), "wall_s": round(time.time() - start, 1), "best": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
