"""Tensor parallelism on torch.distributed (Megatron-style, as the paper's two-GPU setting).

Launched by torchrun (`torchrun --nproc-per-node N --no-python triforce ... hardware.tensor_parallel=N`):
every rank runs the same program on its own GPU (NCCL) or CPU process (gloo, tests).

- The target's attention heads and MLP columns are split across ranks: each rank keeps its
  slice of q/k/v and gate/up (output rows) and of o_proj and down (input columns), and the
  partial outputs of o_proj and down_proj are summed by an all-reduce. Embeddings, norms and the
  output head are replicated, so every rank holds the same residual stream and logits.
- KV caches (full, retrieval, offloaded) follow: a rank's model has num_kv_heads / N KV heads,
  so every cache it builds holds its own heads only.
- The draft model is small: it runs replicated, unsplit.
- Rank 0 draws every random number: after each sample and each verification the engine
  broadcasts rank 0's tokens and verdicts (`Parallel.broadcast`), so every rank takes the same
  branches and its caches stay in lockstep even where its own draw would differ.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import TYPE_CHECKING

import torch

from triforce.errors import ConfigError

if TYPE_CHECKING:  # models/llama.py imports this module
    from triforce.models.config import ModelConfig


class SymmetricAllReduce:
    """All-reduce for the few-token activations of a decode step over NVLink, in symmetric memory
    (torch.distributed._symmetric_memory): one Triton kernel per call copies the partial sums
    into this rank's buffer, meets the peers at one flag barrier and sums every rank's buffer
    (kernels/triton_allreduce.py). NCCL's ring takes ~20 us for a 24 KB message, twice per
    layer; a middle step of a 7B model makes 64 of them. `kernel="torch"` uses torch's one-shot
    all-reduce instead (a copy, then a kernel with two barriers: ~10 us). Larger messages
    (prefill) go to NCCL. Capturable in a CUDA graph; each dtype's buffers are made (a
    collective rendezvous) on its first use, which the warm-up before capture is. `slot` must
    alternate between 0 and 1 from one call to the next (a layer's two all-reduces: 0, 1)."""

    MAX_BYTES = 1 << 20

    def __init__(self, device: torch.device, kernel: str = "triton"):
        import torch.distributed as dist

        self.device, self.kernel = device, kernel
        self.group_name = dist.group.WORLD.group_name
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.state: dict[torch.dtype, _SymmetricBuffers] = {}

    def fits(self, t: torch.Tensor) -> bool:
        return t.is_cuda and t.numel() * t.element_size() <= self.MAX_BYTES and t.is_contiguous()

    def _buffers(self, dtype: torch.dtype) -> "_SymmetricBuffers":
        """This dtype's buffers and every rank's addresses of them, made on first use."""
        import torch.distributed as dist
        import torch.distributed._symmetric_memory as symm_mem

        from triforce.kernels import triton_allreduce

        if dtype not in self.state:
            elements = self.MAX_BYTES // dtype.itemsize
            programs = triton_allreduce.max_programs(elements)
            buf = symm_mem.empty(2 * elements, dtype=dtype, device=self.device)
            flags = symm_mem.empty(2 * programs * self.world, dtype=torch.int32, device=self.device).zero_()

            def addresses(t: torch.Tensor) -> torch.Tensor:
                handle = symm_mem.rendezvous(t, self.group_name)
                offset = t.data_ptr() - handle.buffer_ptrs[self.rank]  # the same on every rank
                return torch.tensor([p + offset for p in handle.buffer_ptrs], dtype=torch.int64, device=self.device)

            state = _SymmetricBuffers(buf, flags, addresses(buf), addresses(flags), elements, programs)
            torch.cuda.synchronize(self.device)
            dist.barrier()  # every rank's flags are zero before any rank raises one
            self.state[dtype] = state
        return self.state[dtype]

    def __call__(self, t: torch.Tensor, slot: int) -> torch.Tensor:
        s = self._buffers(t.dtype)
        if self.kernel == "torch":
            n = t.numel()
            s.buf[:n].copy_(t.view(-1))
            torch.ops.symm_mem.one_shot_all_reduce_out(s.buf[:n], "sum", self.group_name, t.view(-1))
            return t
        from triforce.kernels import triton_allreduce

        return triton_allreduce.all_reduce(t, s.buf_ptrs, s.flag_ptrs, self.rank, self.world, slot, s.elements,
                                           s.programs)


@dataclasses.dataclass(frozen=True)
class _SymmetricBuffers:
    """One dtype's symmetric buffers (held here: freeing them would leave the addresses dangling)
    and every rank's address of each, as int64 device tensors."""

    buf: torch.Tensor  # 2 slots x `elements`
    flags: torch.Tensor  # 2 slots x `programs` x world arrival flags, int32
    buf_ptrs: torch.Tensor
    flag_ptrs: torch.Tensor
    elements: int
    programs: int


@dataclasses.dataclass(frozen=True)
class Parallel:
    rank: int = 0
    world: int = 1
    fast_reduce: SymmetricAllReduce | None = None  # small messages on CUDA (None: NCCL / gloo only)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor, slot: int) -> torch.Tensor:
        """Sum `t` over the ranks, in place (capturable in a CUDA graph with NCCL). `slot` (0, 1)
        must alternate between consecutive calls: see SymmetricAllReduce."""
        if self.world > 1:
            if self.fast_reduce is not None and self.fast_reduce.fits(t):
                return self.fast_reduce(t, slot)
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's `t` on every rank, in place."""
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast(t, src=0)
        return t


SINGLE = Parallel()


def launched_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) outside it."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def quiet_other_ranks() -> None:
    """Before a Hydra app parses its arguments under torchrun: ranks > 0 keep their Hydra folder
    out of outputs/ (rank 0's run folder is the run's record) and print nothing."""
    import sys
    import tempfile

    rank = launched_ranks()[0]
    if rank:
        scratch = tempfile.mkdtemp(prefix=f"triforce-rank{rank}-")
        sys.argv += [f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}", "hydra.output_subdir=null"]
        sys.stdout = open(os.devnull, "w")


def check_launch(tensor_parallel: int) -> None:
    """hardware.tensor_parallel must match the processes torchrun started (cheap: before any work)."""
    _, world, _ = launched_ranks()
    if tensor_parallel != world:
        if world == 1:
            raise ConfigError(f"hardware.tensor_parallel={tensor_parallel} runs one process per GPU: launch with "
                              f"torchrun --nproc-per-node {tensor_parallel} --no-python triforce ...")
        raise ConfigError(f"hardware.tensor_parallel={tensor_parallel} but torchrun started {world} processes: "
                          f"use --nproc-per-node {tensor_parallel}")


def init_parallel(tensor_parallel: int, device: str | torch.device,
                  allreduce: str = "triton") -> tuple[Parallel, torch.device]:
    """Join the process group (NCCL on CUDA, gloo on CPU); this rank's Parallel and device.
    allreduce (the kernel policy's choice for small messages on CUDA): triton (the one-kernel
    all-reduce over symmetric memory), torch (its one-shot all-reduce) or nccl (NCCL only)."""
    device = torch.device(device)
    if tensor_parallel <= 1:
        return SINGLE, device
    check_launch(tensor_parallel)
    import torch.distributed as dist

    rank, world, local = launched_ranks()
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"hardware.tensor_parallel={tensor_parallel} needs {tensor_parallel} GPUs on this "
                              f"host; {torch.cuda.device_count()} visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        import atexit

        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, **({"device_id": device} if device.type == "cuda" else {}))
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    fast = None
    if device.type == "cuda" and allreduce != "nccl":
        try:
            fast = SymmetricAllReduce(device, kernel="torch" if allreduce == "torch" else "triton")
            for slot in (0, 1, 0, 1):  # both slots, twice: the flags come down as they should
                probe = torch.arange(5000, device=device, dtype=torch.float32) * (rank + 1)
                fast(probe, slot)
                want = torch.arange(5000, device=device, dtype=torch.float32) * (world * (world + 1) / 2)
                if not torch.equal(probe, want):
                    raise RuntimeError(f"symmetric-memory all-reduce summed wrong ({probe[:4].tolist()} ...)")
        except Exception as e:  # noqa: BLE001 - no peer access / older torch: NCCL does it all
            import logging

            logging.getLogger(__name__).warning("symmetric-memory all-reduce unavailable (%s): NCCL only", e)
            fast = None
        agreed = torch.tensor([1 if fast is not None else 0], device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)  # every rank takes the same path, or none
        fast = fast if int(agreed) else None
    return Parallel(rank, world, fast), device


def shard_config(cfg: "ModelConfig", world: int) -> "ModelConfig":
    """One rank's share of the model: heads, KV heads and MLP columns divided by `world`."""
    if world == 1:
        return cfg
    for name, value in (("attention heads", cfg.num_heads), ("KV heads", cfg.num_kv_heads),
                        ("MLP columns", cfg.intermediate_size)):
        if value % world:
            raise ConfigError(f"hardware.tensor_parallel={world}: the model's {value} {name} do not split "
                              f"evenly; use a tensor_parallel that divides {cfg.num_kv_heads} (its KV heads)")
    return dataclasses.replace(cfg, num_heads=cfg.num_heads // world, num_kv_heads=cfg.num_kv_heads // world,
                               intermediate_size=cfg.intermediate_size // world)


def _rows(weight: torch.Tensor, parts: list[int], rank: int, world: int) -> torch.Tensor:
    """Rank's slice of each consecutive block of output rows (fused q|k|v, gate|up)."""
    blocks = weight.split(parts, dim=0)
    return torch.cat([b.chunk(world, dim=0)[rank] for b in blocks]).contiguous()


@torch.no_grad()
def shard_model(model, par: Parallel):
    """Keep this rank's slice of every split weight (in place) and add the all-reduces."""
    if not par.enabled:
        return model
    cfg = model.config
    r, w = par.rank, par.world
    d = cfg.head_dim
    qkv_parts = [cfg.num_heads * d, cfg.num_kv_heads * d, cfg.num_kv_heads * d]
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.qkv_proj.weight = torch.nn.Parameter(_rows(attn.qkv_proj.weight, qkv_parts, r, w), requires_grad=False)
        if attn.qkv_proj.bias is not None:
            attn.qkv_proj.bias = torch.nn.Parameter(_rows(attn.qkv_proj.bias, qkv_parts, r, w), requires_grad=False)
        attn.o_proj.weight = torch.nn.Parameter(attn.o_proj.weight.chunk(w, dim=1)[r].contiguous(), requires_grad=False)
        if attn.o_proj.bias is not None and r:  # the bias is added once, by rank 0
            attn.o_proj.bias.zero_()
        attn.num_heads //= w
        attn.num_kv_heads //= w
        inter = cfg.intermediate_size
        mlp.gate_up_proj.weight = torch.nn.Parameter(_rows(mlp.gate_up_proj.weight, [inter, inter], r, w),
                                                     requires_grad=False)
        if mlp.gate_up_proj.bias is not None:
            mlp.gate_up_proj.bias = torch.nn.Parameter(_rows(mlp.gate_up_proj.bias, [inter, inter], r, w),
                                                       requires_grad=False)
        mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight.chunk(w, dim=1)[r].contiguous(),
                                                  requires_grad=False)
        if mlp.down_proj.bias is not None and r:
            mlp.down_proj.bias.zero_()
        # consecutive all-reduces alternate buffer slots (SymmetricAllReduce): o_proj 0, down_proj 1
        attn.reduce = functools.partial(par.all_reduce, slot=0)
        mlp.reduce = functools.partial(par.all_reduce, slot=1)
    model.config = shard_config(cfg, w)
    model.parallel = par
    return model
