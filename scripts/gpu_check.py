"""Smoke check on an accelerator: every method is greedy-identical to autoregressive decoding.

    python scripts/gpu_check.py [--device cuda] [--dtype float32]

Uses a small random Llama (GQA) built in memory, so it needs no weights or network.
"""

from __future__ import annotations

import argparse
import sys

import torch

from triforce.engine import Engine
from triforce.models.config import ModelConfig
from triforce.models.llama import Transformer
from triforce.models.loading import parse_dtype


def random_model(seed: int, device, dtype) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=32, max_position_embeddings=4096, eos_token_id=())
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.to(device=device, dtype=dtype).eval()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    dtype = parse_dtype(args.dtype)
    target, draft = random_model(0, args.device, dtype), random_model(1, args.device, dtype)
    prompt = torch.randint(0, 512, (700,), generator=torch.Generator().manual_seed(0)).tolist()
    greedy = {"temperature": 0}
    reference = Engine(target, None, {"name": "autoregressive"}, greedy).generate(prompt, 48).tokens
    methods = [
        ("spec", draft, {}),
        ("spec", target, {"draft_cache": "full"}),
        ("retrieval_spec", None, {"budget": 64, "chunk_size": 8}),
        ("triforce", draft, {"budget": 64, "chunk_size": 8, "draft_window": 48, "rebuild": "every_n", "rebuild_every": 16}),
        ("triforce", target, {"budget": 128, "scorer": "bound", "rebuild": "on_low_acceptance"}),
    ]
    ok = True
    for name, d, extra in methods:
        res = Engine(target, d, {"name": name, **extra}, greedy).generate(prompt, 48)
        same = res.tokens == reference
        ok &= same
        print(f"{name:15s} {extra} greedy-identical={same} mean_accepted_len={res.metrics['mean_accepted_len']:.2f}")
    sampled = Engine(target, draft, {"name": "triforce", "budget": 64}, {"temperature": 0.6, "top_p": 0.9})
    a, b = sampled.generate(prompt, 32, seed=3).tokens, sampled.generate(prompt, 32, seed=3).tokens
    print(f"seeded sampling reproducible={a == b}")
    ok &= a == b
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__} on {device}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
