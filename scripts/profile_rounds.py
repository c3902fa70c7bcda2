"""Where a generation's decode time goes beyond the levels' forwards: the engine's host work, the
sampling and verification kernels, the GPU's idle gaps — per method, at a batch size.

    python scripts/profile_rounds.py --shape llama3-8b --context 32768 --batch 8 --head-scale 0.03 \
        --methods autoregressive,spec,auto [--tokens 128]

Random weights at controlled acceptance (docs/DESIGN.md §7), the engine as a user runs it (CUDA
graphs). Per method, after a warm-up generation: one plain generation (its throughput and the
overhead the run reports: 1 - the levels' device time / decode wall time), then the same generation
under cProfile (the host's Python: where the time outside the forwards is spent, and how much of it
is waiting for the device) and under torch.profiler (kernels launched outside the captured graphs,
the device's busy time over the decode, and its idle time by what the host was doing when each idle
stretch began: the engine's phases are wrapped in profiler ranges for that run only, `host_phases`).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import cProfile
import functools
import io
import pstats
import time

import torch
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile

from triforce.bench import latency
from triforce.bench.shapes import DRAFT_OF, SHAPES, random_model
from triforce.conf import __file__ as conf_init
from triforce.config import method_config
from triforce.prefill_memo import PrefillMemo
from triforce.sampling import SamplingParams
from triforce.tree import widths_of

SAMPLING = SamplingParams(temperature=0.6, top_p=0.9)
CUDA = torch.cuda.is_available()  # else eager on the CPU: the tests run its functions on a tiny model (main needs a GPU)
HARDWARE = {"prefill_chunk": 8192} if CUDA else {"prefill_chunk": 8192, "executor": "eager", "device": "cpu"}


def synchronize() -> None:
    if CUDA:
        torch.cuda.synchronize()


def methods_of(names: str, tree: str = "4-2-1-1") -> dict:
    """autoregressive, spec (gamma 8), spec_tree (a token tree at the top: `tree`'s widths per depth), auto and the fixed
    configurations of the adaptive benchmark's config (triforce, triforce_hybrid, triforce_streaming,
    magicdec)."""
    from pathlib import Path

    cfg = OmegaConf.load(Path(conf_init).parent / "adaptive_benchmark.yaml")
    known = {"autoregressive": {"name": "autoregressive"}, "spec": {"name": "spec", "gamma": 8},
             "spec_tree": {"name": "spec", "tree": list(widths_of(tree))},
             "auto": OmegaConf.to_container(cfg.auto),
             **{k: OmegaConf.to_container(v) for k, v in cfg.fixed.items()}}
    out = {}
    for name in names.split(","):
        if name not in known:
            raise SystemExit(f"error: --methods: {name!r} is not one of {', '.join(known)}")
        out[name] = method_config(known[name])
    return out


def kernel_intervals(prof) -> list[tuple[float, float]]:
    """(start, end) in us of every kernel the profiler saw on the device."""
    return [(e.time_range.start, e.time_range.end) for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA]


def merged(intervals: list[tuple[float, float]]) -> list[list[float]]:
    """The union of (start, end) intervals, as disjoint [start, end] in order."""
    out: list[list[float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def busy_us(prof) -> float:
    """The device's busy time (us): the union of the kernels' intervals."""
    return sum(e - s for s, e in merged(kernel_intervals(prof)))


OUTSIDE = "outside the engine's phases"


def _phases():
    """(owner, attribute, label) of the host's phases in a round, innermost wins: the round's own
    bookkeeping, the planner's choice, a level's catch-up, a forward's host work (views, draws,
    timers) and its graph replay, the verification's launches and the one read-back."""
    from triforce import engine, executor, planner

    return [(engine.Generation, "step", "round: bookkeeping"), (engine.Generation, "_use", "catch-up"),
            (planner.AdaptivePlanner, "choose", "planner's choice"),
            (executor.StaticExecutor, "forward", "forward: host work"), (executor.Runner, "run", "forward: replay"),
            (engine, "verify_into", "verification launches"), (engine.Verdict, "read", "read-back (the sync)")]


@contextlib.contextmanager
def host_phases():
    """The engine's phases wrapped in torch.profiler ranges (record_function) while the block runs,
    restored after: the product's code carries no ranges of its own."""
    from torch.profiler import record_function

    saved = []
    for owner, name, label in _phases():
        raw = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        fn = raw.__func__ if isinstance(raw, classmethod) else raw

        @functools.wraps(fn)
        def wrapped(*a, _fn=fn, _label=label, **k):
            with record_function(_label):
                return _fn(*a, **k)

        setattr(owner, name, classmethod(wrapped) if isinstance(raw, classmethod) else wrapped)
        saved.append((owner, name, raw))
    try:
        yield
    finally:
        for owner, name, raw in reversed(saved):
            setattr(owner, name, raw)


def idle_by_phase(kernels: list[tuple[float, float]], ranges: list[tuple[float, float, str]], start: float,
                  end: float) -> dict[str, float]:
    """The device's idle time in [start, end] (no kernel running: `kernels` as (start, end)), each
    idle stretch charged to the innermost host range (start, end, label) active when it began, or
    to OUTSIDE: label -> seconds in the units given."""
    gaps, t = [], start
    for s, e in merged(kernels):
        if s > t:
            gaps.append((t, min(s, end)))
        t = max(t, e)
    if t < end:
        gaps.append((t, end))
    ranges = sorted(ranges)
    starts = [r[0] for r in ranges]
    out: dict[str, float] = collections.defaultdict(float)
    for gs, ge in gaps:
        if ge <= gs:
            continue
        active = [r for r in ranges[: bisect.bisect_right(starts, gs)] if r[1] > gs]
        out[max(active)[2] if active else OUTSIDE] += ge - gs  # the latest-started: the innermost
    return dict(out)


def print_idle_by_phase(prof, steps: int) -> None:
    labels = {label for _, _, label in _phases()}
    kernels = kernel_intervals(prof)
    ranges = [(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
              if e.device_type == torch.autograd.DeviceType.CPU and e.name in labels]
    if not kernels or not ranges:
        print("--- the device's idle time by host phase: no device timeline here")
        return
    rounds = [r for r in ranges if r[2] == "round: bookkeeping"]
    start, end = min(r[0] for r in rounds), max(r[1] for r in rounds)
    idle = idle_by_phase(kernels, ranges, start, end)
    total = sum(idle.values())
    print(f"--- the device's idle time by what the host was doing when it began: {total / 1e3 / max(steps, 1):.2f} ms "
          f"a round over {steps} rounds")
    for label, us in sorted(idle.items(), key=lambda kv: -kv[1]):
        print(f"    {label:28s} {us / 1e3 / max(steps, 1):7.3f} ms a round ({us / total:.0%})")


def decode_steps(engine, prompts, tokens: int):
    """A generation's stream with its prefill and first step done: the rest is decode only."""
    stream = engine.stream(prompts if len(prompts) > 1 else prompts[0], tokens, seed=0, stop_at_eos=False)
    next(stream)
    synchronize()
    return stream


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--head-scale", type=float, default=0.03)
    ap.add_argument("--methods", default="autoregressive,spec,auto")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--tree", default="4-2-1-1", help="spec_tree's widths per depth, e.g. 8 or 4-2-1-1")
    ap.add_argument("--top", type=int, default=28, help="Python functions shown per profile")
    args = ap.parse_args()
    # the shapes it profiles are 7-12B models at long contexts: on a CPU they do not fit, so no smoke run
    latency.require_gpu("scripts/profile_rounds.py", [args.shape])
    methods = methods_of(args.methods, args.tree)
    device, dtype = "cuda", torch.bfloat16
    target = random_model(SHAPES[args.shape], dtype=dtype, device=device)
    draft = random_model(SHAPES[DRAFT_OF[args.shape]], dtype=dtype, device=device, seed=1)
    for model in (target, draft):
        latency.scale_heads(model, args.head_scale)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, SHAPES[args.shape].vocab_size, (args.context,), generator=g).tolist()
               for _ in range(args.batch)]
    print(f"{torch.cuda.get_device_name()}: {args.shape} at {args.context}, batch {args.batch}, "
          f"head scale {args.head_scale}, {args.tokens} new tokens", flush=True)
    memo = PrefillMemo(max_bytes=64 * 2 ** 30)
    with torch.inference_mode():
        for name, method in methods.items():
            if CUDA:
                latency.free_memory()
            engine = latency.graph_engine(target, draft if method.uses_draft else None, method, SAMPLING,
                                          dict(HARDWARE), prefill_memo=memo)
            engine.warm_up(prompts)
            plain = engine.generate(prompts, args.tokens, seed=0, stop_at_eos=False).metrics
            levels = sum(v for k, v in plain.items() if k.startswith("time_s/") and latency.forward_phase(k[7:]))
            print(f"\n=== {name}: {plain['throughput']:.1f} tokens/s, decode {plain['decode_s']:.3f} s, "
                  f"levels' device time {levels:.3f} s, overhead {plain['time_s/overhead'] / plain['decode_s']:.3f}; "
                  + ", ".join(f"{k} {v:.4g}" for k, v in sorted(plain.items())
                              if k.startswith(("time_s/", "forwards/", "plan_rounds/"))), flush=True)
            # the decode under cProfile: the host's own time (and its waits for the device)
            stream = decode_steps(engine, prompts, args.tokens)
            profiler = cProfile.Profile()
            start = time.perf_counter()
            profiler.enable()
            steps = sum(1 for _ in stream)
            profiler.disable()
            wall = time.perf_counter() - start
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.top)
            pstats.Stats(profiler, stream=text).sort_stats("cumtime").print_stats(args.top)
            print(f"--- cProfile of the decode after its first step: {wall:.3f} s, {steps} steps, "
                  f"{1e3 * wall / max(steps, 1):.2f} ms a step (tottime order, then cumtime)")
            print("\n".join(line for line in text.getvalue().splitlines()[4:] if line.strip()))
            # torch.profiler: the device's busy time and the kernels by total time
            stream.close()
            del stream
            if CUDA:
                latency.free_memory()  # the last stream's caches, before the next one's
            stream = decode_steps(engine, prompts, args.tokens)
            with host_phases(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                t0 = time.perf_counter()
                steps = sum(1 for _ in stream)
                synchronize()
                wall = time.perf_counter() - t0
            busy = busy_us(prof)
            print(f"--- torch.profiler: {steps} steps in {wall:.3f} s, device busy {busy / 1e6:.3f} s "
                  f"({busy / 1e6 / wall:.3f} of the wall), {1e3 * (wall - busy / 1e6) / max(steps, 1):.2f} ms idle a step")
            print_idle_by_phase(prof, steps)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
            print(prof.key_averages().table(sort_by="self_device_time_total" if CUDA else "cpu_time_total", row_limit=16))
            del engine, stream
    print("\ndone", flush=True)


if __name__ == "__main__":
    main()
