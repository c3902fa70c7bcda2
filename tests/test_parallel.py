"""Tensor parallelism (parallel.py) on CPU with gloo: two processes, each with half of every
layer's heads and MLP columns and half of every cache's KV heads, generate exactly the tokens of
one process, for every method, MHA and GQA, on-chip and with an offloaded full cache, one prompt
and a batch of three ragged ones; and under sampling rank 0's draws decide every token (rank 1 is
seeded differently and still agrees)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.engine.conftest import perturbed, random_model
from triforce.engine import Engine
from triforce.errors import ConfigError
from triforce.models.config import ModelConfig
from triforce.parallel import check_launch, init_parallel, shard_config, shard_model

METHODS = {
    "autoregressive": dict(name="autoregressive"),
    "spec": dict(name="spec", gamma=4, draft_sink=4, draft_window=18),
    "retrieval_spec": dict(name="retrieval_spec", gamma=3, budget=16, chunk_size=4, rebuild="every_n",
                           rebuild_every=5),
    "triforce": dict(name="triforce", gamma=4, draft_gamma=2, budget=16, chunk_size=4, draft_sink=2,
                     draft_window=18),
    "triforce-self-bound": dict(name="triforce", gamma=3, draft_gamma=1, budget=24, chunk_size=8, scorer="bound",
                                draft_sink=4, draft_window=14),
}
KINDS = {"mha": dict(kv_heads=4), "gqa": dict(kv_heads=2)}
ENGINE_KW = {"on-chip": {}, "offload": dict(offload=True, on_chip_layers=1, prefill_chunk=32)}
NEW = 12  # several rounds of every level, and a rebuild (retrieval_spec: every 5 steps)


def models(kind: str):
    target = random_model(seed=30, scale=2.0, layers=3, **KINDS[kind])
    draft = perturbed(target, random_model(seed=31, scale=2.0, layers=3, **KINDS[kind]), 0.3)
    prompt = torch.randint(0, 64, (61,), generator=torch.Generator().manual_seed(32)).tolist()
    return target, draft, prompt


def batch_of(prompt: list[int]) -> list[list[int]]:
    """Three ragged prompts: a shorter, the prompt, a longer."""
    extra = torch.randint(0, 64, (17,), generator=torch.Generator().manual_seed(33)).tolist()
    return [prompt[:40], prompt, prompt + extra]


def generate_all(target, draft, prompt, seed_of=lambda method: 0, sampling=None):
    """Every method's tokens, on chip and offloaded, for the prompt alone and for a batch of three."""
    out = {}
    for kind_kw, kw in ENGINE_KW.items():
        for name, method in METHODS.items():
            d = target if name.endswith("self-bound") else draft
            engine = Engine(target, d, method, sampling or dict(temperature=0.0), {"executor": "static", **kw})
            out[(kind_kw, name)] = engine.generate(prompt, NEW, seed=seed_of(name)).tokens
            batch = engine.generate(batch_of(prompt), NEW, seed=seed_of(name))
            out[(kind_kw, name, "batch")] = [r.tokens for r in batch]
    return out


def worker(rank: int, world: int, port: int, kind: str, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        par, _ = init_parallel(world, "cpu")
        target, draft, prompt = models(kind)
        shard_model(target, par)
        greedy = generate_all(target, draft, prompt)
        # sampling: rank 1 seeds its generator differently; rank 0's draws must decide
        sampled = generate_all(target, draft, prompt, seed_of=lambda m: 100 + 7 * rank,
                               sampling=dict(temperature=0.8, top_p=0.9))
        queue.put((rank, greedy, sampled, target.config.num_kv_heads))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_two_ranks_generate_the_tokens_of_one_process(kind):
    target, draft, prompt = models(kind)
    single = generate_all(target, draft, prompt)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, 2, free_port() if r == 0 else 0, kind, queue)) for r in range(2)]
    port = procs[0]._args[2]
    procs[1]._args = (1, 2, port, kind, queue)
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in procs:
            rank, greedy, sampled, kv_heads = queue.get(timeout=600)
            results[rank] = (greedy, sampled, kv_heads)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    for key, tokens in single.items():  # a batch's sequences: each its prompt's tokens alone (one process)
        if key[-1] == "batch":
            assert tokens[1] == single[key[:2]], key
    for rank in (0, 1):
        greedy, sampled, kv_heads = results[rank]
        assert kv_heads == KINDS[kind]["kv_heads"] // 2  # each rank's caches hold half the KV heads
        assert greedy == single, rank
        assert sampled == results[0][1]  # lockstep: rank 1 emits rank 0's draws
    # (rank 0's samples need not equal a single process's: the ranks' partial sums round
    # differently, and one flipped draw changes the rest of the sequence)


def test_shard_config_splits_heads_and_columns():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, max_position_embeddings=128)
    half = shard_config(cfg, 2)
    assert (half.num_heads, half.num_kv_heads, half.intermediate_size) == (2, 1, 32)
    with pytest.raises(ConfigError, match="do not split evenly"):
        shard_config(cfg, 4)


def test_tensor_parallel_outside_torchrun_names_the_launch_command(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node 2 --no-python triforce"):
        check_launch(2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="use --nproc-per-node 2"):
        check_launch(2)
