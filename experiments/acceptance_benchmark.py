"""Acceptance benchmark: SmolLM2 self-speculation on Gutenberg books (a script, not a test).

For every (prompt length, middle cache, budget, chunk size, gamma) it runs TriForce —
draft = SmolLM2 with a StreamingLLM cache, middle = SmolLM2 with the retrieval cache (or a
StreamingLLM cache of the same budget: the paper's ablation), top = SmolLM2 with the full
cache — on several books and reports acceptance per level and the mean accepted length
(tokens per top-level forward), averaged over books. The model loads once.

    python experiments/acceptance_benchmark.py                      # the full grid (GPU advised)
    python experiments/acceptance_benchmark.py --prompt-lens 1024 --budgets 256 --books 1 --new-tokens 16

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

DEFAULT_BOOKS = ["paradise_lost_(no_introduction)_gut", "hamlet_gut", "poetical_works_gut", "comus_gut"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt-lens", type=int, nargs="+", default=[4096, 8000])
    p.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--gammas", type=int, nargs="+", default=[4, 6])
    p.add_argument("--draft-gamma", type=int, default=2)
    p.add_argument("--middle-caches", nargs="+", default=["retrieval", "streaming"])
    p.add_argument("--draft-sink", type=int, default=16)
    p.add_argument("--draft-window", type=int, default=240)
    p.add_argument("--books", type=int, default=4, help="how many of the default books")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
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


def main(argv=None) -> int:
    args = parse_args(argv)
    # Validate the whole grid before loading anything.
    configs = []
    for prompt_len, middle, budget, chunk, gamma in grid(args):
        configs.append((prompt_len, MethodConfig(
            name="triforce", gamma=gamma, draft_gamma=args.draft_gamma, budget=budget, chunk_size=chunk,
            middle_cache=middle, draft_sink=args.draft_sink, draft_window=args.draft_window)))
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
        runs = [baseline.generate(ids[:prompt_len], args.new_tokens, seed=args.seed, stop_at_eos=False)
                for ids in tokens.values()]
        base_ms[prompt_len] = sum(r.metrics["ms_per_token"] for r in runs) / len(runs)
    rows = []
    for i, (prompt_len, method) in enumerate(configs):
        engine = Engine(model, model, method, sampling)
        for name, ids in tokens.items():
            res = engine.generate(ids[:prompt_len], args.new_tokens, seed=args.seed, stop_at_eos=False)
            m = res.metrics
            rows.append(dict(prompt_len=prompt_len, middle=method.middle_cache, budget=method.budget,
                             chunk_size=method.chunk_size, gamma=method.gamma, book=name,
                             accept_draft=m["accept_rate/draft"], accept_middle=m["accept_rate/middle"],
                             mean_accepted_len=m["mean_accepted_len"], ms_per_token=m["ms_per_token"],
                             new_tokens=m["new_tokens"]))
        print(f"[{i + 1}/{len(configs)}] {time.time() - start:.0f}s", file=sys.stderr, flush=True)

    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    keys = ["prompt_len", "middle", "budget", "chunk_size", "gamma"]
    table = (df.groupby(keys, sort=True)[["accept_draft", "accept_middle", "mean_accepted_len", "ms_per_token"]]
             .mean().reset_index())
    table["baseline_ms_per_token"] = table.prompt_len.map(base_ms)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\nSmolLM2-135M self-speculation, {len(tokens)} books, {args.new_tokens} new tokens, "
          f"T={args.temperature} top-p={args.top_p}, draft cache {args.draft_sink}+{args.draft_window}, "
          f"draft_gamma={args.draft_gamma}, {args.dtype} on {device}\n")
    print(markdown_table(table))
    best = table[table.middle == "retrieval"].sort_values("mean_accepted_len").iloc[-1].to_dict()
    print(json.dumps({"runs": len(df), "wall_s": round(time.time() - start, 1), "best": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
