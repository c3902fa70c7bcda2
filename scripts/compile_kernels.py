"""Compile every Triton kernel of the decode path for a GPU, on any machine (no GPU needed).

    python scripts/compile_kernels.py [--arch 90] [--only top_p,attention,...]

Triton's interpreter (the kernel tests) runs a kernel's semantics on the CPU but never compiles
it, so code it accepts may not compile for a GPU, and it says nothing about the resources a
compiled kernel takes. Here the kernels' own Python launchers run on CPU tensors at the model
sizes the engine uses (7B, 8B and 68M shapes), with each launch intercepted: instead of running,
the kernel is compiled for the target (Triton's bundled ptxas) exactly as a launch would compile
it (same arguments, constexprs and alignment specialisation), and its registers per thread,
spilled bytes and shared memory are printed. Exit code 1 if a kernel fails to compile or spills.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"  # compile for real (must precede importing triton)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, compile as triton_compile, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

RESULTS: list[dict] = []


def resources(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    fields = {}
    for line in text.splitlines():
        if "REG:" in line:
            for item in line.split():
                if ":" in item:
                    k, _, v = item.partition(":")
                    fields[k] = int(v) if v.isdigit() else v
    return fields


def install(target: GPUTarget, label: list[str]) -> None:
    backend = make_backend(target)
    binders: dict[int, object] = {}

    def run(self: JITFunction, *args, grid, warmup, **kwargs):
        kwargs["debug"] = False
        binder = binders.setdefault(id(self), create_function_from_signature(self.signature, self.params, backend))
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, specialization, options)
        row = dict(case=label[0], kernel=self.fn.__name__, warps=options.num_warps, stages=options.num_stages,
                   pdl=options.launch_pdl)
        try:
            compiled = triton_compile(ASTSource(self, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
            res = resources(compiled.asm["cubin"])
            row.update(regs=res.get("REG"), spill=res.get("LOCAL", 0), shared=compiled.metadata.shared, ok=True)
        except Exception as e:  # noqa: BLE001 - reported, then the exit code says it failed
            row.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
        RESULTS.append(row)
        return None

    JITFunction.run = run


def cases(only: set[str] | None, pdl: bool = False):
    """(group, label, thunk) for each launch configuration the engine uses: the launches the kernel
    policy plans for an H100 (kernels/policy.py; on a CPU it answers with an H100's properties),
    with programmatic dependent launch as a captured graph takes it when `pdl`."""
    from triforce.kernels import triton_decode, triton_linear, triton_top_p
    from triforce.kernels.policy import H100, KernelPolicy

    bf16 = torch.bfloat16
    out = []
    policy = KernelPolicy(H100)
    pf = dict(pdl=pdl, prefetch=policy.linear_prefetch if pdl else 0)

    def splits_launch(q, k):
        B, Hq, T, D = q.shape
        return policy.attention_launch(batch=B, kv_heads=k.shape[1], rows=Hq // k.shape[1] * T, head_dim=D,
                                       capacity=k.shape[2], element_size=q.element_size())

    def add(group, label, fn):
        if only is None or group in only:
            out.append((group, label, fn))

    for vocab in (32000, 49152, 128256):
        for rows in (1, 7, 17):
            logits = torch.empty(rows, vocab, dtype=bf16)
            add("top_p", f"split V={vocab} rows={rows}", lambda lg=logits: triton_top_p.top_p_split(lg, 0.6, 0.9, pdl=pdl))
        add("top_p", f"split V={vocab} top_p=1", lambda lg=logits: triton_top_p.top_p_split(lg, 0.6, 1.0, pdl=pdl))
    add("top_p", "single V=32000", lambda: triton_top_p.top_p_probabilities(torch.empty(1, 32000, dtype=bf16), 0.6, 0.9,
                                                                             pdl=pdl))

    for name, hq, hkv, d, keys in (("7b", 32, 32, 128, 32768), ("8b", 32, 8, 128, 32768), ("68m", 12, 12, 64, 256)):
        k = torch.empty(1, hkv, keys + 64, d, dtype=bf16)
        for t in (1, 3, 7, 17):
            q = torch.empty(1, t, hq, d, dtype=bf16).transpose(1, 2)
            length = torch.tensor([keys], dtype=torch.int64)
            add("attention", f"{name} T={t}", lambda q=q, k=k, length=length: triton_decode.decode_attention(
                q, k, k, length, d ** -0.5, splits_launch(q, k), pdl=pdl,
                prefetch=policy.attention_prefetch if pdl else 0))
    # the stage rule's other ends: float32 (gpu_check's reference runs) and head_dim 256, with a 128-row tile
    for dtype, d in ((torch.float32, 128), (bf16, 256)):
        k = torch.empty(1, 8, 4096, d, dtype=dtype)
        for t in (1, 17):
            q = torch.empty(1, t, 32, d, dtype=dtype).transpose(1, 2)
            length = torch.tensor([4000], dtype=torch.int64)
            add("attention", f"{str(dtype)[6:]} d={d} T={t}", lambda q=q, k=k, length=length:
                triton_decode.decode_attention(q, k, k, length, d ** -0.5, splits_launch(q, k), pdl=pdl,
                prefetch=policy.attention_prefetch if pdl else 0))

    # a batch of 4 sequences, each at its own length
    for name, hq, hkv, d in (("8b", 32, 8, 128), ("68m", 12, 12, 64)):
        k = torch.empty(4, hkv, 4096 + 64, d, dtype=bf16)
        for t in (1, 7):
            q = torch.empty(4, t, hq, d, dtype=bf16).transpose(1, 2)
            length = torch.tensor([4096, 100, 2000, 7], dtype=torch.int64)
            add("attention", f"{name} B=4 T={t}", lambda q=q, k=k, length=length: triton_decode.decode_attention(
                q, k, k, length, d ** -0.5, splits_launch(q, k), pdl=pdl,
                prefetch=policy.attention_prefetch if pdl else 0))

    from triforce.inputs import DevicePositions, Rope
    from triforce.kernels import triton_embedding, triton_rotary, triton_streaming, triton_verify

    for name, heads, d in (("68m", 12, 64), ("7b-self", 32, 128)):
        cache = torch.empty(2, 1, heads, 256, d, dtype=bf16)
        add("streaming", f"evict {name}", lambda cache=cache, d=d: triton_streaming.shift_window(
            cache, cache, 16, 256, 1, torch.empty(d // 2)))
        add("streaming", f"evict {name} B=4 per sequence", lambda d=d, heads=heads: (
            triton_streaming.shift_window_per_sequence(torch.empty(2, 4, heads, 256, d, dtype=bf16),
                                                       torch.empty(2, 4, heads, 256, d, dtype=bf16), 16,
                                                       torch.zeros(4, dtype=torch.int32),
                                                       torch.zeros(4, dtype=torch.int32), torch.empty(d // 2))))
    for name, hq, hkv, d in (("8b", 32, 8, 128), ("68m", 12, 12, 64)):  # the standalone rotary + cache write
        for batch, t in ((1, 1), (1, 7), (4, 1), (4, 7)):
            qkv = torch.empty(batch, t, (hq + 2 * hkv) * d, dtype=bf16)
            cache = torch.empty(batch, hkv, 300, d, dtype=bf16)
            starts = torch.zeros(batch, dtype=torch.int64)
            rope = Rope(DevicePositions(starts, t), torch.empty(d // 2), 1.0, bf16)
            add("rotary", f"rope_store-{name} B={batch} T={t}", lambda qkv=qkv, cache=cache, starts=starts, rope=rope,
                hq=hq, hkv=hkv, d=d, batch=batch, t=t: triton_rotary.rope_store(
                    *(x.view(batch, t, -1, d).transpose(1, 2) for x in qkv.split([hq * d, hkv * d, hkv * d], -1)),
                    rope, cache, cache, starts, pdl=pdl))
    from triforce.kernels.prenormed import PreNormed
    from triforce.kernels.triton_linear import RopeStore

    for vocab in (32000, 128256):
        for k in (2, 6, 16):
            q, p = torch.empty(k, vocab), torch.empty(k + 1, vocab)
            tokens, u, race = torch.zeros(k, dtype=torch.int64), torch.empty(k), torch.empty(vocab)
            add("verify", f"V={vocab} k={k}", lambda q=q, p=p, tokens=tokens, u=u, race=race: (
                triton_verify.race_verify(tokens, q, p, u, race, out_tokens=torch.zeros(64, dtype=torch.int64),
                                          base=3)))
        add("verify", f"sample V={vocab}", lambda vocab=vocab: triton_verify.race_sample(
            torch.empty(vocab), torch.empty(vocab), out_tokens=torch.zeros(64, dtype=torch.int64), index=5))
        q, p = torch.empty(4, 6, vocab), torch.empty(4, 7, vocab)  # a batch of 4, each at its own base
        tokens, u, race = torch.zeros(4, 6, dtype=torch.int64), torch.empty(4, 6), torch.empty(4, vocab)
        add("verify", f"V={vocab} B=4 k=6", lambda q=q, p=p, tokens=tokens, u=u, race=race: (
            triton_verify.race_verify(tokens, q, p, u, race, out_tokens=torch.zeros(4, 64, dtype=torch.int64), base=1,
                                      base_from=torch.zeros(4, dtype=torch.int64))))
        add("verify", f"sample V={vocab} B=4", lambda vocab=vocab: triton_verify.race_sample(
            torch.empty(4, vocab), torch.empty(4, vocab), out_tokens=torch.zeros(4, 64, dtype=torch.int64), index=5,
            index_from=torch.zeros(4, dtype=torch.int64)))

    from triforce.kernels import triton_norm

    for hidden in (4096, 768):
        for t in (1, 17):
            x, nw = torch.empty(1, t, hidden, dtype=bf16), torch.empty(hidden, dtype=bf16)
            add("norm", f"rms_norm {hidden} T={t}", lambda x=x, nw=nw: triton_norm.rms_norm(x, nw, 1e-5, x, pdl=pdl))
            add("norm", f"pre_norm {hidden} T={t}", lambda x=x, nw=nw: triton_norm.rms_norm(x, nw, 0.0, x, True, pdl=pdl))
    for name, hidden in (("8b", 4096), ("68m", 768)):
        w = torch.empty(1000, hidden, dtype=bf16)
        ids = torch.zeros(64, dtype=torch.int64)
        add("embedding", f"{name}", lambda w=w, ids=ids: triton_embedding.embed_slice(w, ids, ids[0], 1, pdl=pdl))
        rows = torch.zeros(4, 64, dtype=torch.int64)
        add("embedding", f"{name} B=4 T=7", lambda w=w, rows=rows: triton_embedding.embed_slice(w, rows, rows[:, 0], 7,
                                                                                                 pdl=pdl))
    for name, hq, hkv, d, hidden in (("7b", 32, 32, 128, 4096), ("8b", 32, 8, 128, 4096), ("68m", 12, 12, 64, 768)):
        w = torch.empty((hq + 2 * hkv) * d, hidden, dtype=bf16)
        nw = torch.empty(hidden, dtype=bf16)
        cache = torch.empty(1, hkv, 300, d, dtype=bf16)
        start = torch.zeros((), dtype=torch.int64)
        spec = RopeStore(positions=start, from_start=True, inv_freq=torch.empty(d // 2), scale=1.0, k_cache=cache,
                         v_cache=cache, slot=start, num_heads=hq, num_kv_heads=hkv, head_dim=d)
        for t in (1, 3, 7, 17):
            x = torch.empty(1, t, hidden, dtype=bf16)
            if t == 1:
                add("linear", f"qkv+rope-{name} T=1 norm+residual", lambda x=x, w=w, nw=nw, spec=spec: (
                    triton_linear.fused_linear(x, w, residual=x, norm_weight=nw, eps=1e-5, rope=spec, **pf)))
            else:
                add("linear", f"qkv+rope-{name} T={t}", lambda x=x, w=w, spec=spec: triton_linear.fused_linear(
                    x, w, rope=spec, **pf))
    for name, hq, hkv, d, hidden in (("8b", 32, 8, 128, 4096), ("68m", 12, 12, 64, 768)):  # a batch of 4 sequences
        w = torch.empty((hq + 2 * hkv) * d, hidden, dtype=bf16)
        nw = torch.empty(hidden, dtype=bf16)
        cache = torch.empty(4, hkv, 300, d, dtype=bf16)
        starts = torch.zeros(4, dtype=torch.int64)
        for t in (1, 4, 8):
            x = torch.empty(4, t, hidden, dtype=bf16)
            for kind, positions in (("start", starts), ("table", torch.zeros(4, t, dtype=torch.int64))):
                spec = RopeStore(positions=positions, from_start=kind == "start", inv_freq=torch.empty(d // 2),
                                 scale=1.0, k_cache=cache, v_cache=cache, slot=starts, num_heads=hq, num_kv_heads=hkv,
                                 head_dim=d)
                add("linear", f"qkv+rope-{name} B=4 T={t} {kind}", lambda x=x, w=w, spec=spec: (
                    triton_linear.fused_linear(x, w, rope=spec, **pf)))
            pre = PreNormed(h=x, scaled=x, sq=torch.empty(64, 4 * t))
            add("linear", f"qkv+rope-{name} B=4 T={t} row scale", lambda pre=pre, w=w, spec=spec: (
                triton_linear.fused_linear(pre, w, eps=1e-5, rope=spec, **pf)))
    for name, (n, kdim) in {"qkv-8b": (6144, 4096), "o-8b": (4096, 4096), "down-8b": (4096, 14336),
                            "lm_head-8b": (128256, 4096), "qkv-68m": (2304, 768), "lm_head-68m": (32000, 768)}.items():
        w = torch.empty(n, kdim, dtype=bf16)
        nw = torch.empty(kdim, dtype=bf16)
        for t in (1, 7, 17):
            x = torch.empty(1, t, kdim, dtype=bf16)
            add("linear", f"{name} T={t}", lambda x=x, w=w: triton_linear.fused_linear(x, w, **pf))
            if t == 1:
                add("linear", f"{name} T=1 norm+residual", lambda x=x, w=w, nw=nw: triton_linear.fused_linear(
                    x, w, residual=x, norm_weight=nw, eps=1e-5, **pf))
    from triforce.kernels.prenormed import PreNormed

    for t in (1, 7, 17):  # an RMSNorm folded into the products around it: o_proj / down_proj, then the next ones
        x, r, nw = torch.empty(1, t, 4096, dtype=bf16), torch.empty(1, t, 4096, dtype=bf16), torch.empty(4096, dtype=bf16)
        o, down = torch.empty(4096, 4096, dtype=bf16), torch.empty(4096, 14336, dtype=bf16)
        add("linear", f"o-8b T={t} norm out", lambda x=x, r=r, nw=nw, o=o: triton_linear.fused_linear(
            x, o, residual=r, norm_out=nw, **pf))
        add("linear", f"down-8b T={t} norm out", lambda t=t, r=r, nw=nw, down=down: triton_linear.fused_linear(
            torch.empty(1, t, 14336, dtype=bf16), down, residual=r, norm_out=nw, **pf))
        pre = PreNormed(h=x, scaled=x, sq=torch.empty(64 if t > 1 else 256, t))
        for name, n in (("gate_up-8b", 28672), ("lm_head-8b", 128256)):
            w = torch.empty(n, 4096, dtype=bf16)
            add("linear", f"{name} T={t} row scale", lambda pre=pre, w=w, name=name: triton_linear.fused_linear(
                pre, w, eps=1e-5, gated=name.startswith("gate"), **pf))
        cache = torch.empty(1, 8, 300, 128, dtype=bf16)
        start = torch.zeros((), dtype=torch.int64)
        spec = RopeStore(positions=start, from_start=True, inv_freq=torch.empty(64), scale=1.0, k_cache=cache,
                         v_cache=cache, slot=start, num_heads=32, num_kv_heads=8, head_dim=128)
        add("linear", f"qkv+rope-8b T={t} row scale", lambda pre=pre, spec=spec: triton_linear.fused_linear(
            pre, torch.empty(6144, 4096, dtype=bf16), eps=1e-5, rope=spec, **pf))
    for name, (n, kdim) in {"gate_up-8b": (28672, 4096), "gate_up-68m": (6144, 768)}.items():
        w = torch.empty(n, kdim, dtype=bf16)
        for t in (1, 3, 17):  # SwiGLU in the epilogue
            x = torch.empty(1, t, kdim, dtype=bf16)
            add("linear", f"{name} T={t} gated", lambda x=x, w=w: triton_linear.fused_linear(x, w, gated=True, **pf))
    # the tuning files' launches (kernels/tuning/*.json): the 8B gate/up with 128-deep input blocks
    tuned = KernelPolicy.resolve("cuda", environ={}, props=H100)
    w, x = torch.empty(28672, 4096, dtype=bf16), torch.empty(1, 17, 4096, dtype=bf16)
    launch = tuned.linear_launch(17, 28672, 4096, gated=True)
    add("linear", f"gate_up-8b T=17 gated [{launch.entry}]", lambda x=x, w=w, launch=launch: triton_linear.fused_linear(
        x, w, gated=True, launch=launch, **pf))
    from triforce.kernels import triton_allreduce

    for world in (2, 4):
        for dtype in (bf16, torch.float32):
            x, ptrs = torch.empty(3 * 4096, dtype=dtype), torch.zeros(world, dtype=torch.int64)
            add("allreduce", f"world={world} {dtype}", lambda x=x, ptrs=ptrs, world=world: triton_allreduce.all_reduce(
                x, ptrs, ptrs, 0, world, 1, 1 << 19, 256))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--pdl", action="store_true", help="compile the kernels as a captured graph launches them with "
                    "programmatic dependent launch (the policy's default on sm90+)")
    ap.add_argument("--only", default=None, help="comma-separated groups: top_p,attention,linear,norm,embedding,verify,"
                    "streaming,rotary,allreduce")
    args = ap.parse_args()
    label = [""]
    install(GPUTarget("cuda", args.arch, 32), label)
    failed = False
    for group, name, thunk in cases(set(args.only.split(",")) if args.only else None, pdl=args.pdl):
        label[0] = f"{group}: {name}"
        start = len(RESULTS)
        try:
            thunk()
        except Exception as e:  # noqa: BLE001 - the launcher itself failed
            RESULTS.append(dict(case=label[0], kernel="(launcher)", ok=False, error=f"{type(e).__name__}: {e}"[:300]))
        for row in RESULTS[start:]:
            if row["ok"]:
                bad = row["spill"] > 0
                print(f"{row['case']:40s} {row['kernel']:22s} warps={row['warps']} stages={row['stages']} "
                      f"regs={row['regs']:3d} spill={row['spill']} shared={row['shared']}"
                      f"{' pdl' if row['pdl'] else ''}{'  SPILLS' if bad else ''}")
            else:
                bad = True
                print(f"{row['case']:40s} {row['kernel']:22s} FAILED {row['error']}")
            failed |= bad
    print("FAILED" if failed else "all kernels compiled without spills", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
