"""Every kernel choice of a run in one frozen object, resolved once (docs/DESIGN.md §6).

    policy = KernelPolicy.resolve(device, overrides)     # once, by the engine
    policy.attention_launch(...), policy.linear_launch(...)  # the decode plan asks, at bind time

What it decides:

- whether the Triton kernels run at all (`kernels`: on CUDA with Triton installed; on CPU tensors
  only through Triton's interpreter, `TRITON_INTERPRET=1`, which the tests use);
- programmatic dependent launch in captured graphs (`pdl`), a proposer's steps captured as one
  graph (`chain_steps`), the linear backend of decode-sized
  products (`linear`: the fused Triton kernel or cuBLAS), the fusions (an RMSNorm split across the
  products around it, a small one-row product taking its norm into its prologue), the L2 prefetch
  before each PDL wait, the all-reduce of tensor parallelism;
- the launch parameters: rules over the device's properties (SM count, shared memory per SM, a
  Hopper-class SM), and, where a rule cannot fit what was measured, the entries of a small
  per-device tuning file (`triforce/kernels/tuning/<device>.json`, written by
  `scripts/tune_kernels.py --write-tuning`). An entry is never used silently: the decode plan
  records which ones its launches came from (`DecodePlan.tuning_used`), and the run writes them
  with `describe()`.

The environment is read here and nowhere else: `TRIFORCE_PDL`, `TRIFORCE_LINEAR`,
`TRIFORCE_ALLREDUCE`, `TRIFORCE_CHAIN_STEPS` (each also a config override, `hardware.kernels.*`) and Triton's own
`TRITON_INTERPRET`. No kernel module reads a switch at launch time: every entry point takes its
launch (or the policy) as an argument, so a captured graph records exactly what the policy says.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from triforce.errors import ConfigError

TUNING_DIR = Path(__file__).parent / "tuning"
GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class DeviceProps:
    """What the launch rules read of a device."""
    name: str
    sm_count: int
    shared_memory_per_sm: int  # bytes
    capability: tuple[int, int]

    @property
    def hopper(self) -> bool:
        """sm90 or later: warpgroup MMA, bulk L2 prefetch, programmatic dependent launch."""
        return self.capability >= (9, 0)

    @classmethod
    def of(cls, device: torch.device | str) -> "DeviceProps":
        """A CUDA device's properties; for a CPU an H100's, so Triton's interpreter and the CPU
        compile tool plan the launches an H100 gets."""
        device = torch.device(device)
        if device.type != "cuda":
            return H100
        return _cuda_props(device.index if device.index is not None else torch.cuda.current_device())

    def slug(self) -> str:
        """The device's tuning file name: its name, lower case, non-alphanumerics as '-'."""
        return "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-")


@functools.lru_cache(maxsize=8)
def _cuda_props(index: int) -> DeviceProps:
    p = torch.cuda.get_device_properties(index)
    return DeviceProps(p.name, p.multi_processor_count, p.shared_memory_per_multiprocessor, (p.major, p.minor))


H100 = DeviceProps("NVIDIA H100 80GB HBM3", 132, 233472, (9, 0))
H200 = DeviceProps("NVIDIA H200", 132, 233472, (9, 0))


@dataclasses.dataclass(frozen=True)
class Tile:
    """A linear product's launch: `design` 0 = input rows as the MMA's M side, 1 = weight rows as
    the M side (swap AB, the usual skinny-GEMM form), 2 = no MMA (one input row); columns per
    program, input depth per step, warps, pipeline stages."""
    design: int
    block_n: int
    block_k: int
    warps: int
    stages: int


@dataclasses.dataclass(frozen=True)
class LinearLaunch:
    tile: Tile
    split_k: int
    stages: int  # the tile's stages after the one-wave and float32 rules
    entry: str | None = None  # the tuning entry it came from, if any


@dataclasses.dataclass(frozen=True)
class AttentionLaunch:
    block_m: int  # query rows of the tile (a KV head's group x new tokens fit in it)
    block_n: int  # keys per block
    warps: int
    stages: int
    splits: int  # key slices per KV head
    entry: str | None = None


@dataclasses.dataclass(frozen=True)
class TuningEntry:
    """A measured exception to a rule: `kind` (attention | linear), what it matches, the launch it
    sets, and where the measurement is."""
    name: str
    kind: str
    match: Mapping[str, Any]
    launch: Mapping[str, Any]
    measured: str = ""

    def matches(self, **facts) -> bool:
        for key, want in self.match.items():
            if key == "min_rows":
                if facts.get("rows", 0) < want:
                    return False
            elif key == "max_rows":
                if facts.get("rows", 0) > want:
                    return False
            elif facts.get(key) != want:
                return False
        return True


@dataclasses.dataclass(frozen=True)
class Tuning:
    device: str
    entries: tuple[TuningEntry, ...] = ()
    path: str | None = None

    def find(self, kind: str, **facts) -> TuningEntry | None:
        return next((e for e in self.entries if e.kind == kind and e.matches(**facts)), None)

    @classmethod
    def load(cls, path: Path) -> "Tuning":
        try:
            data = json.loads(Path(path).read_text())
            entries = tuple(TuningEntry(name=e["name"], kind=e["kind"], match=dict(e.get("match", {})),
                                        launch=dict(e["launch"]), measured=e.get("measured", ""))
                            for e in data["entries"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"kernel tuning file {path} is unreadable ({type(e).__name__}: {e}); fix or delete it, "
                              "or rewrite it with scripts/tune_kernels.py --write-tuning") from None
        return cls(device=data.get("device", ""), entries=entries, path=str(path))

    @classmethod
    def for_device(cls, props: DeviceProps, folder: Path = TUNING_DIR) -> "Tuning":
        path = folder / f"{props.slug()}.json"
        return cls.load(path) if path.is_file() else cls(device=props.name)


# The launch tables of the rules (measured on an H100 and an H200: docs/PERFORMANCE.md, docs/data/tune_*):
ONE_ROW = Tile(2, 16, 1024, 8, 2)  # one input row: no MMA, long contiguous weight rows
FEW_ROWS = Tile(1, 64, 256, 4, 4)  # 2..MAX_ROWS rows: the weight tile as the MMA's M side
MAX_ROWS = 32  # rows of a product the fused kernel takes; more go to cuBLAS (tensor-core tiles)
ATTENTION_MIN_BLOCK_M = 64  # one warpgroup: Hopper's warpgroup MMA runs the tile however few rows it has
ATTENTION_MAX_BLOCK_M = 128  # two warpgroups; more query rows (a token tree's) take several tiles
ATTENTION_BLOCK_N = 64
ATTENTION_SHARED_BYTES = 144 * 1024  # of an SM's 227 KiB: the pipeline buffers, with room for the compiler's own


@dataclasses.dataclass(frozen=True)
class KernelPolicy:
    device: DeviceProps
    kernels: bool = False  # the Triton kernels run (CUDA + Triton, or the interpreter on CPU tensors)
    interpreter: bool = False  # ... through Triton's CPU interpreter (tests)
    pdl: bool = True  # programmatic dependent launch in captured graphs (sm90+)
    linear: str = "triton"  # decode-sized products: triton (the fused kernel) | torch (cuBLAS)
    fold_norm: bool = True  # RMSNorm between two products split across their epilogues (linear.PreNormed)
    fold_norm_min_rows: int = 1
    fuse_prologue_rows: int = 1  # a product of at most this many rows may take its norm inside ...
    fuse_prologue_small_bytes: int = 16 * 2 ** 20  # ... if its weights are smaller than this (the draft's)
    linear_prefetch: int = 16 * 1024  # with PDL: bytes of its weight rows a program pulls into L2 before its wait
    attention_prefetch: int = 16 * 1024  # ... of its key slice (and as many of values)
    split_k_choices: tuple[int, ...] = (1, 2, 4)
    one_row: Tile = ONE_ROW
    few_rows: Tile = FEW_ROWS
    one_wave_stages: int = 3  # FEW_ROWS' stages where its programs fill the GPU at most once
    attention_programs_per_sm: int = 2  # where the tile lets two fit
    attention_max_slices: int = 32
    allreduce: str = "triton"  # tensor parallelism, small messages: triton | torch (one-shot) | nccl
    # a proposer's one-token steps after its round's first as one captured forward (executor.StaticExecutor.steps);
    # off until a same-run benchmark on a GPU shows it faster (docs/PERFORMANCE.md)
    chain_steps: bool = False
    tuning: Tuning = dataclasses.field(default_factory=lambda: Tuning(""))

    OVERRIDES = ("kernels", "pdl", "linear", "fold_norm", "allreduce", "chain_steps", "tuning_file")

    # -- resolution: the one place that reads the environment --------------------------------
    @classmethod
    def resolve(cls, device: torch.device | str, overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None, *, props: DeviceProps | None = None) -> "KernelPolicy":
        """The policy for `device` (a run's engine resolves it once: engine.py). overrides
        (`hardware.kernels`): kernels (auto | true | false), pdl, linear, fold_norm, allreduce,
        chain_steps, tuning_file (a path, or null: the device's own file). Environment variables override the
        defaults, config overrides override both."""
        environ = os.environ if environ is None else environ
        device = torch.device(device)
        o = cls.check_overrides(device.type, overrides, environ)
        props = props or DeviceProps.of(device)
        interpreter = environ.get("TRITON_INTERPRET", "0") == "1"
        kernels = o["kernels"]
        if kernels == "auto":
            kernels = device.type == "cuda" and triton_available() and not interpreter
        tuning_file = o.get("tuning_file")
        if tuning_file:
            tuning = Tuning.load(Path(tuning_file).expanduser())
        elif device.type == "cuda":
            tuning = Tuning.for_device(props)
        else:  # the interpreter plans an H100's launches by the rules alone
            tuning = Tuning("cpu")
        policy = cls(device=props, kernels=bool(kernels), interpreter=interpreter and device.type != "cuda",
                     pdl=o["pdl"] and props.hopper, linear=o["linear"], fold_norm=o["fold_norm"],
                     allreduce=o["allreduce"], chain_steps=o["chain_steps"], tuning=tuning)
        return policy.tuned()

    @classmethod
    def check_overrides(cls, device_type: str, overrides: Mapping[str, Any] | None = None,
                        environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The overrides checked and completed from the environment (names and values, and whether
        the kernels can run on this kind of device at all), without building a policy: the app's
        pre-flight asks this before any weights load. A ConfigError names the bad setting."""
        environ = os.environ if environ is None else environ
        overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}  # null: not given
        unknown = set(overrides) - set(cls.OVERRIDES)
        if unknown:
            raise ConfigError(f"unknown hardware.kernels option(s) {sorted(unknown)}; known: {list(cls.OVERRIDES)}")
        interpreter = environ.get("TRITON_INTERPRET", "0") == "1"
        kernels = overrides.get("kernels", "auto")
        if kernels is True and device_type != "cuda" and not (interpreter and triton_available()):
            raise ConfigError("hardware.kernels.kernels=true on a CPU runs the Triton kernels through Triton's "
                              "interpreter: set TRITON_INTERPRET=1 before starting (tests do), or leave it auto")
        if kernels != "auto" and not isinstance(kernels, bool):
            raise ConfigError(f"hardware.kernels.kernels={kernels!r}: choose auto, true or false")
        out = dict(overrides, kernels=kernels)
        out["pdl"] = _flag(overrides.get("pdl", environ.get("TRIFORCE_PDL", "1")), "hardware.kernels.pdl")
        out["linear"] = str(overrides.get("linear", environ.get("TRIFORCE_LINEAR", "triton")))
        if out["linear"] not in ("triton", "torch"):
            raise ConfigError(f"hardware.kernels.linear={out['linear']!r}: choose triton (the fused kernel) or torch "
                              "(cuBLAS)")
        out["allreduce"] = cls.allreduce_of(overrides, environ)
        out["fold_norm"] = _flag(overrides.get("fold_norm", True), "hardware.kernels.fold_norm")
        out["chain_steps"] = _flag(overrides.get("chain_steps", environ.get("TRIFORCE_CHAIN_STEPS", "0")),
                                   "hardware.kernels.chain_steps")
        return out

    @staticmethod
    def allreduce_of(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> str:
        """Tensor parallelism's all-reduce of small messages (needed to join the ranks, before a
        policy exists): triton (one kernel over symmetric memory), torch (its one-shot) or nccl."""
        environ = os.environ if environ is None else environ
        value = (overrides or {}).get("allreduce")
        allreduce = str(value if value is not None else environ.get("TRIFORCE_ALLREDUCE", "triton"))
        if allreduce == "auto":
            allreduce = "triton"
        if allreduce not in ("triton", "torch", "nccl"):
            raise ConfigError(f"hardware.kernels.allreduce={allreduce!r}: choose triton, torch or nccl")
        return allreduce

    def tuned(self) -> "KernelPolicy":
        """The policy with the device-wide entries of its tuning file applied (per-product entries
        are looked up at launch: `linear_launch`)."""
        entry = self.tuning.find("attention")
        if entry is None:
            return self
        fields = {k: v for k, v in entry.launch.items() if k in ("attention_programs_per_sm", "attention_max_slices")}
        return dataclasses.replace(self, **fields)

    def with_(self, **changes) -> "KernelPolicy":
        """A copy with some fields changed (scripts/tune_launch.py compares such variants)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """What the run records (summary.json, W&B config): every choice and the tuning file."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("device", "tuning")}
        out["one_row"], out["few_rows"] = dataclasses.astuple(self.one_row), dataclasses.astuple(self.few_rows)
        out["split_k_choices"] = list(self.split_k_choices)
        out["device"] = self.device.name
        out["tuning_file"] = self.tuning.path
        return out

    # -- what runs where ---------------------------------------------------------------------
    def uses_kernels(self, t: torch.Tensor) -> bool:
        """The Triton kernels for tensors like `t`: on CUDA, or on a CPU through the interpreter."""
        return self.kernels and (t.is_cuda or self.interpreter)

    def fused(self, rows: int) -> bool:
        """A product of `rows` input rows runs the fused Triton kernel (else cuBLAS / torch)."""
        return self.kernels and self.linear == "triton" and rows <= MAX_ROWS

    def fuses_prologue(self, rows: int, weight_bytes: int) -> bool:
        """A product takes the RMSNorm (and residual add) before it inside its own kernel: only a
        small one-row product (the draft's), whose launch would cost more than the prologue. In a
        7B/8B step every program's pass over the input before its first weight load is a ramp that
        nothing hides (H100, 8B at 32K: 1.113 of its floor fused, 1.089 apart)."""
        return self.fused(rows) and rows <= self.fuse_prologue_rows and weight_bytes < self.fuse_prologue_small_bytes

    def folds_norm(self, rows: int, consumer_bytes: int) -> bool:
        """The RMSNorm between two fused products is split across their epilogues (PreNormed)."""
        return (self.fold_norm and self.fused(rows) and rows >= self.fold_norm_min_rows
                and not self.fuses_prologue(rows, consumer_bytes))

    # -- launch rules ----------------------------------------------------------------------------
    def linear_launch(self, rows: int, n: int, k: int, *, gated: bool = False, element_size: int = 2,
                      rope_head_dim: int | None = None) -> LinearLaunch:
        """The fused product's launch for `rows` input rows and a (n, k) weight: ONE_ROW for one row,
        else FEW_ROWS, or a tuning entry for this product and these rows (one for a single row may
        name another design: Qwen2.5-7B's narrow q/k/v product ran faster as the few-row tile); split-K
        for products whose column tiles do not fill the GPU, a shallower pipeline for one wave of
        programs unless the entry names the stages it was measured with, half the stages for float32
        tiles (twice bf16's: they must fit shared memory). rope_head_dim: the q/k/v product with the
        rotary epilogue, whose programs' columns lie within one head."""
        entry = self.tuning.find("linear", rows=rows, n=n, k=k, gated=gated)
        tile = self.one_row if rows == 1 else self.few_rows
        if entry is not None:
            tile = Tile(**{**dataclasses.asdict(tile), **entry.launch})
        if rope_head_dim is not None:
            tile = dataclasses.replace(tile, block_n=min(tile.block_n, rope_head_dim))
        tiles = -(-n // 2 // (tile.block_n // 2)) if gated else -(-n // tile.block_n)
        split_k = self.split_k(tiles, rows, k, tile.block_k)
        stages = tile.stages
        pinned = entry is not None and "stages" in entry.launch  # measured with these stages
        if tile.design != 2 and tiles * split_k <= self.device.sm_count and not pinned:
            stages = self.one_wave_stages
        if element_size > 2:
            stages = max(2, stages // 2)
        return LinearLaunch(tile, split_k, stages, entry.name if entry else None)

    def split_k(self, tiles: int, rows: int, k: int, block_k: int) -> int:
        """Split-K parts: 1 for one row (its 16-wide tiles fill the GPU) and for products that fill
        every SM once; else the most parts that keep tiles x parts within one wave of one program
        per SM, each part at least two input blocks long."""
        sms = self.device.sm_count
        if rows == 1 or tiles >= sms:
            return 1
        fits = [s for s in self.split_k_choices if tiles * s <= sms and k >= 2 * s * block_k]
        return max(fits, default=1)

    def attention_tile(self, rows: int, head_dim: int, element_size: int = 2, block_m: int | None = None,
                       warps: int | None = None, stages: int | None = None) -> tuple[int, int, int]:
        """(block_m, warps, stages): a tile of the next power of two >= 64 query rows, at most 128
        (more rows take several tiles: attention_launch); 4 warps and 3 stages up to 64 rows, 8 warps
        and 4 stages for 128, with as many stages as fit shared memory ((stages - 1) key and value
        blocks in flight plus the query tile)."""
        bm = block_m or min(ATTENTION_MAX_BLOCK_M, max(ATTENTION_MIN_BLOCK_M, _next_pow2(rows)))
        st = stages or (3 if bm <= 64 else 4)
        if stages is None:
            while st > 2 and ((st - 1) * 2 * ATTENTION_BLOCK_N + bm) * head_dim * element_size > ATTENTION_SHARED_BYTES:
                st -= 1
        return bm, warps or (4 if bm <= 64 else 8), st

    def attention_launch(self, *, batch: int, kv_heads: int, rows: int, head_dim: int, capacity: int,
                         element_size: int = 2) -> AttentionLaunch:
        """Key slices per KV head: one wave of programs over the batch's `batch` x `kv_heads`
        (sequence, KV head) pairs, `attention_programs_per_sm` per SM where the tile lets two fit (a 64-row tile on a Hopper SM; the 128-row tile's 8 warps take the
        register file), at most `attention_max_slices` per head, each at least four key blocks.
        Measured over whole captured levels at 32K (docs/data/tune_levels_h200.txt): on an H200 the
        8B shape (8 KV heads) is 5% faster with 32 slices than with 16 (autoregressive step 1.210
        -> 1.148 of its floor; 1.236 -> 1.070 at 120K), the 7B shape (32 KV heads, 8 slices) is the
        same; the H100 measured 16 slices 0.7% faster for the 8B shape (its tuning file). A batch
        whose pairs alone fill the wave gets one slice (its programs then take more than one wave:
        nothing splitting keys could change that). The slice cap never leaves an SM without a
        program: a shape of few KV heads (Qwen2.5-7B: 4) gets as many slices as give every SM one
        (33 on an H100, where 16 left half of them idle: autoregressive step 1.30 of its floor at
        124,928 keys, docs/data/latency_h100_families.json); one per SM is what the H100's sweep
        measured best for 8 KV heads (docs/data/tune_attention_tiles_h100.txt: p1 over p2). Rows
        beyond one tile (a token tree's verify) take ceil(rows / 128) tiles per (sequence, KV head),
        and the wave counts them: fewer slices, as many programs."""
        bm, warps, stages = self.attention_tile(rows, head_dim, element_size)
        per_sm = self.attention_programs_per_sm if self.device.hopper and bm <= 64 else 1
        pairs = batch * kv_heads * -(-rows // bm)  # (sequence, KV head, row tile) programs per key slice
        every_sm = self.device.sm_count // pairs  # slices that give each SM a program
        most = max(1, min(max(self.attention_max_slices, every_sm), capacity // (4 * ATTENTION_BLOCK_N)))
        splits = max(1, min(self.device.sm_count * per_sm // pairs, most))
        return AttentionLaunch(bm, ATTENTION_BLOCK_N, warps, stages, splits)


@dataclasses.dataclass(frozen=True)
class KernelContext:
    """What a launch site hands every kernel entry point: the policy, whether its launches are
    captured with programmatic dependent launch, and the workspace whose counters they share."""
    policy: KernelPolicy
    pdl: bool = False
    workspace: Any = None  # kernels.workspace.Workspace

    def on(self, t: torch.Tensor) -> bool:
        return self.policy.uses_kernels(t)


def _flag(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise ConfigError(f"{key}={value!r} must be true or false")


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True
