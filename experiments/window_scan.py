"""How large should the hybrid middle cache's recent window be? A teacher-forced scan (a script).

For each book: the prompt is its first N tokens and the continuation its next T tokens (the book's
own text, so every cache is judged on the same tokens). The full cache is prefilled once; for each
budget and recent-window size the middle cache is selected from it as the engine selects it, and
the mean over the continuation of sum_x min(p(x), p̂(x)) — the top level's expected acceptance of
the middle's token — is printed (p: full cache, p̂: middle cache; temperature / top-p applied).
Window 0 is the retrieval cache, `all` StreamingLLM, `default` the hybrid's default rule.

    python experiments/window_scan.py --prompt-len 8000 --books othello_gut lear_gut macbeth_gut

Last line: JSON with every value. docs/RESULTS.md holds the scan behind the hybrid's default.
"""

from __future__ import annotations

import argparse
import json
import sys

import pandas as pd
import torch

from triforce.cache.retrieval import RetrievalCache
from triforce.cache.static import StaticKVCache
from triforce.data.gutenberg import load_books
from triforce.config import MethodConfig
from triforce.models import load_model, load_tokenizer
from triforce.report import markdown_table
from triforce.sampling import SamplingParams, probabilities


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt-len", type=int, default=4096)
    p.add_argument("--continuation", type=int, default=128)
    p.add_argument("--books", nargs="+", default=["othello_gut", "lear_gut", "macbeth_gut"])
    p.add_argument("--fractions", type=float, nargs="+", default=[1 / 32, 1 / 16, 1 / 8])
    p.add_argument("--windows", type=int, nargs="+", default=[0, 128, 256, 384, 512])
    p.add_argument("--chunk-size", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


@torch.inference_mode()
def scan_book(model, ids: list[int], args) -> list[dict]:
    n, T = args.prompt_len, args.continuation
    prompt, cont = ids[:n], ids[n:n + T]
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p)
    full = StaticKVCache.for_model(model.config, n + T, model.dtype, model.device)
    for start in range(0, n, 1024):  # prefill as the engine does: all of it, then the last token rolled back
        model(torch.tensor([prompt[start:start + 1024]]), None, full)
    full.crop(n - 1)
    query = full.last_query.clone()  # the last prompt token's, as the engine's rebuild after prefill
    inputs = torch.tensor([[prompt[-1], *cont[:-1]]])
    p = probabilities(model(inputs, None, full)[0], params)
    full.crop(n - 1)
    rows = []
    for fraction in args.fractions:
        budget = round(fraction * n)
        room = budget - args.chunk_size
        hybrid = MethodConfig(name="retrieval_spec", budget=budget, chunk_size=args.chunk_size, middle_cache="hybrid")
        windows = {str(w): min(w, room) for w in args.windows} | {"all": room, "default": hybrid.recent_tokens(budget)}
        row = {"budget": budget}
        for label, recent in windows.items():
            middle = RetrievalCache.for_model(model.config, budget=budget, chunk_size=args.chunk_size, scorer="mean",
                                              recent=recent, extra_capacity=T, dtype=model.dtype, device=model.device)
            middle.rebuild(full, query=query)
            q = probabilities(model(inputs, None, middle)[0], params)
            row[label] = float(torch.minimum(p, q).sum(-1).mean())
        rows.append(row)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype="float32")
    tokenizer = load_tokenizer(args.model)
    rows = []
    for book in load_books(names=args.books):
        ids = tokenizer(book.text)["input_ids"]
        if len(ids) < args.prompt_len + args.continuation:
            sys.exit(f"error: {book.name} has fewer than {args.prompt_len + args.continuation} tokens")
        rows += [{"book": book.name, **r} for r in scan_book(model, ids, args)]
        print(f"{book.name} done", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    mean = table.drop(columns="book").groupby("budget").mean().reset_index()
    print(f"\nexpected acceptance of the middle's tokens by recent window (tokens), {args.prompt_len}-token prompts, "
          f"chunks of {args.chunk_size}, mean over {len(args.books)} books\n")
    print(markdown_table(mean))
    print(json.dumps({"prompt_len": args.prompt_len, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
