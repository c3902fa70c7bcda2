"""The kernel policy (triforce/kernels/policy.py): resolved once from config and environment, and
its launch rules, evaluated for an H100's and an H200's properties against what was measured on
each card (docs/data/tune_*_h100.txt, docs/data/tune_levels_h200.txt). The H100 cannot be
re-measured now: these tests keep the rules from drifting away from its measurements."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from triforce.errors import ConfigError
from triforce.kernels.policy import FEW_ROWS, H100, H200, ONE_ROW, KernelPolicy, Tile, Tuning

DATA = Path(__file__).parents[2] / "docs" / "data"


def policy_for(props, **overrides) -> KernelPolicy:
    """The policy a CUDA device with these properties resolves to (its own tuning file included)."""
    return KernelPolicy.resolve("cuda", overrides, environ={}, props=props)


# -- resolution ---------------------------------------------------------------------------------

def test_environment_and_config_overrides_resolve_in_one_place():
    assert policy_for(H200).pdl and policy_for(H200).linear == "triton"
    off = KernelPolicy.resolve("cuda", {}, environ={"TRIFORCE_PDL": "0", "TRIFORCE_LINEAR": "torch"}, props=H200)
    assert not off.pdl and off.linear == "torch"
    # the config wins over the environment
    assert KernelPolicy.resolve("cuda", {"pdl": True}, environ={"TRIFORCE_PDL": "0"}, props=H200).pdl
    # no programmatic launch before Hopper
    ampere = dataclasses.replace(H100, name="NVIDIA A100-SXM4-80GB", capability=(8, 0))
    assert not policy_for(ampere).pdl
    # a CPU runs no kernels unless asked, and then only through the interpreter
    cpu = KernelPolicy.resolve("cpu", {}, environ={})
    assert not cpu.kernels and not cpu.uses_kernels(torch.empty(1))
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        KernelPolicy.resolve("cpu", {"kernels": True}, environ={})
    # a proposer's steps as one captured graph: off unless asked, by the config or the environment
    assert not policy_for(H200).chain_steps
    assert KernelPolicy.resolve("cuda", {}, environ={"TRIFORCE_CHAIN_STEPS": "1"}, props=H200).chain_steps
    assert not KernelPolicy.resolve("cuda", {"chain_steps": False}, environ={"TRIFORCE_CHAIN_STEPS": "1"},
                                    props=H200).chain_steps
    assert policy_for(H200, chain_steps=True).describe()["chain_steps"] is True


@pytest.mark.parametrize("overrides,match", [
    ({"pdll": True}, "unknown hardware.kernels option"),
    ({"linear": "cublas"}, "hardware.kernels.linear='cublas'"),
    ({"allreduce": "mpi"}, "hardware.kernels.allreduce='mpi'"),
    ({"pdl": "maybe"}, "hardware.kernels.pdl='maybe' must be true or false"),
    ({"kernels": "yes"}, "hardware.kernels.kernels='yes'"),
    ({"chain_steps": "often"}, "hardware.kernels.chain_steps='often' must be true or false"),
])
def test_bad_overrides_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        KernelPolicy.resolve("cuda", overrides, environ={}, props=H200)


def test_the_run_records_its_choices_and_tuning_file():
    described = policy_for(H100).describe()
    assert described["device"] == H100.name and described["pdl"] is True
    assert described["tuning_file"].endswith("nvidia-h100-80gb-hbm3.json")
    assert described["attention_max_slices"] == 16  # the H100's measured exception, applied
    json.dumps(described)  # what summary.json and W&B receive


def test_a_corrupt_tuning_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="tuning file .* is unreadable"):
        KernelPolicy.resolve("cuda", {"tuning_file": str(bad)}, environ={}, props=H200)


def test_fusions_only_where_they_pay():
    p = policy_for(H200)
    draft_qkv = 2304 * 768 * 2  # 3.4 MiB: its own norm launch would cost more than the prologue
    assert p.fuses_prologue(1, draft_qkv) and not p.fuses_prologue(3, draft_qkv)
    for n in (6144, 12288, 28672):  # 8B q/k/v, 7B q/k/v, 8B gate/up: apart, the norm split across products
        assert not p.fuses_prologue(1, n * 4096 * 2) and p.folds_norm(1, n * 4096 * 2)
    assert not p.fused(33) and not p.with_(linear="torch").fused(3)  # cuBLAS beyond the few-row kernel


def test_prefetch_only_with_programmatic_launch_and_aligned_rows():
    from triforce.kernels.triton_pdl import prefetch_bytes

    assert prefetch_bytes(False, 16384, 8192) == 0  # no PDL: nothing runs beside a predecessor
    assert prefetch_bytes(True, 16384, 0x7F0000000100, 8192) == 16384
    assert prefetch_bytes(True, 1000, 8192) == 992  # two runs of a multiple of 16 bytes each
    assert prefetch_bytes(True, 16384, 8192, 8) == 0  # a stride not 16-byte aligned: a bulk prefetch would fault
    assert prefetch_bytes(True, 16384, 0x7F0000000108, 8192) == 0  # nor a base address
    assert prefetch_bytes(True, 0, 8192) == 0


# -- attention: the H100's measured bests -----------------------------------------------------

def attention_bests_h100() -> list[tuple[int, int, int, tuple[int, int, int, int]]]:
    """(kv heads, keys, new tokens, (tile, warps, stages, slices)) of every kernel-alone case."""
    text = (DATA / "tune_attention_tiles_h100.txt").read_text()
    cases = re.findall(r"hkv=(\d+) keys=(\d+) T=(\d+) rows=\d+:.*\n\s+best: (\d+) w(\d+) s(\d+) p\d\[(\d+)\]", text)
    return [(int(h), int(k), int(t), tuple(int(x) for x in best)) for h, k, t, *best in cases]


def launch(policy, kv_heads, keys, t):
    a = policy.attention_launch(batch=1, kv_heads=kv_heads, rows=32 // kv_heads * t, head_dim=128, capacity=keys + 64)
    return a.block_m, a.warps, a.stages, a.splits


def test_attention_tiles_and_slices_are_the_h100s_best():
    """Every kernel-alone case of the H100 sweep: the policy picks its fastest tile, warps and stages;
    and its slices, except for the 7B shape (32 KV heads), where whole captured levels measured 8
    slices (two programs per SM) faster than the kernel-alone best of 4 (autoregressive 1.050 ->
    1.024 of its floor: tune_attention_tiles_levels_h100.txt)."""
    bests = attention_bests_h100()
    assert len(bests) >= 10
    h100 = policy_for(H100)
    for kv_heads, keys, t, best in bests:
        got = launch(h100, kv_heads, keys, t)
        assert got[:3] == best[:3], (kv_heads, keys, t)
        assert got[3] == (8 if kv_heads == 32 else best[3]), (kv_heads, keys, t)
    levels = (DATA / "tune_attention_tiles_levels_h100.txt").read_text()
    seven = re.search(r"== llama2-7b at 32768\n.*\n\| autoregressive T=1 \| [^|]+\| [^|]+\((\d\.\d+)\) \| [^|]+\((\d\.\d+)\)",
                      levels)
    one, two = float(seven.group(1)), float(seven.group(2))
    assert two < one  # 64/2 (8 slices) beat 64/1 (4 slices) over the whole level


def test_attention_slices_of_a_batch_keep_one_wave():
    """A batch of B sequences has B x Hkv (sequence, KV head) pairs: the slices per pair shrink so
    the programs still fill the GPU once (at most one wave; at least half of one unless the slice
    cap or the cache's length binds), one slice once the pairs alone fill it."""
    for props in (H100, H200):
        policy = policy_for(props)
        for kv_heads, t in ((8, 1), (8, 17), (32, 1), (12, 1)):
            rows = 32 // kv_heads * t if kv_heads < 32 else t
            before = None
            for batch in (1, 2, 3, 4, 8, 16, 64):
                a = policy.attention_launch(batch=batch, kv_heads=kv_heads, rows=rows, head_dim=128,
                                            capacity=32768 + 64)
                wave = props.sm_count * (policy.attention_programs_per_sm if a.block_m <= 64 else 1)
                pairs = batch * kv_heads
                if pairs >= wave:
                    assert a.splits == 1, (props.name, kv_heads, batch)
                else:
                    assert pairs * a.splits <= wave
                    assert 2 * pairs * a.splits > wave or a.splits == policy.attention_max_slices
                assert before is None or a.splits <= before  # more sequences, never more slices each
                before = a.splits


def test_few_kv_heads_still_give_every_sm_a_program():
    """Qwen2.5-7B has 4 KV heads: at the slice cap (16) its 64 programs left half an H100's SMs idle;
    the cap gives way to one program per SM. The Llama shapes (8 and 32 KV heads) keep their slices."""
    for props in (H100, H200):
        policy = policy_for(props)
        for kv_heads in (4, 2):
            for batch in (1, 2):
                a = policy.attention_launch(batch=batch, kv_heads=kv_heads, rows=28 // kv_heads, head_dim=128,
                                            capacity=131072)
                pairs = batch * kv_heads
                assert a.splits == max(policy.attention_max_slices, props.sm_count // pairs), (props.name, kv_heads)
                assert pairs * a.splits + pairs > props.sm_count  # no SM left without a program
        for kv_heads, slices in ((8, min(policy.attention_max_slices, 2 * props.sm_count // 8)), (32, 8)):
            a = policy.attention_launch(batch=1, kv_heads=kv_heads, rows=32 // kv_heads, head_dim=128, capacity=131072)
            assert a.splits == slices, (props.name, kv_heads)


def h200_levels() -> dict[str, dict[str, float]]:
    """{'<context> <variant>': {'autoregressive 1': ratio, ...}} from the H200 whole-level sweep."""
    out = {}
    for line in (DATA / "tune_levels_h200.txt").read_text().splitlines():
        m = re.match(r"8B (\d+) (.+?)\s*: (.*) \[", line)
        if m:
            cells = dict((k.strip(), float(r)) for k, r in re.findall(r"([a-z ]+\d+) [\d.]+ \(([\d.]+)\)", m.group(3)))
            out[f"{m.group(1)} {m.group(2)}"] = cells
    return out


def test_attention_slices_follow_the_h200s_measurement():
    """On an H200 the 8B shape's 64-row tiles take 32 slices (two programs per SM): whole captured
    levels measured it 5% faster than 16 at 32K and 13% at 120K; the 128-row tile (17 tokens) keeps
    one program per SM, measured faster than two; the 7B shape keeps 8 slices."""
    h200 = policy_for(H200)
    assert launch(h200, 8, 32768, 1)[3] == 32 and launch(h200, 8, 32768, 7)[3] == 32
    assert launch(h200, 8, 32768, 17)[3] == 16
    assert launch(h200, 32, 32768, 1)[3] == 8
    levels = h200_levels()
    for ctx in (32768, 124928):
        default, doubled = levels[f"{ctx} default"], levels[f"{ctx} attn p2 cap32"]
        assert doubled["autoregressive 1"] < default["autoregressive 1"]
        assert doubled["verify 7"] < default["verify 7"]
        assert levels[f"{ctx} attn p2/2 cap32"]["verify 17"] > default["verify 17"]  # two 128-row programs: slower


# -- linear products ----------------------------------------------------------------------------

def test_one_row_products_take_the_h100s_best_launch():
    """tune_linear_h100.txt, one input row: every 7B/8B product's fastest launch is ONE_ROW. (The
    68M draft's gate/up and output head measured 256-deep blocks faster alone; the draft step takes
    its norm inside those products, which the whole-level timings chose: kernels.policy.fuses_prologue.)"""
    text = (DATA / "tune_linear_h100.txt").read_text()
    rows = re.findall(r"linear (\S+)\s+T= 1:.*design=(\d) block_n=(\d+) block_k=(\d+) warps=(\d+) stages=(\d+)", text)
    assert len(rows) >= 9
    h100 = policy_for(H100)
    for name, *best in rows:
        if name.endswith("68m") and name != "qkv-68m":
            continue
        assert dataclasses.astuple(ONE_ROW) == tuple(int(b) for b in best), name
        assert h100.linear_launch(1, 4096, 4096).tile == ONE_ROW


def test_split_k_and_stages_are_the_h100s_best():
    """tune_split_k_h100.txt: the narrow products of several rows (64 column tiles) measured fastest
    split in two with 3 stages (one wave); q/k/v of the 8B shape (96 tiles) unsplit with 3 stages."""
    text = (DATA / "tune_split_k_h100.txt").read_text()
    h100 = policy_for(H100)
    shapes = {"o": (4096, 4096), "down-7b": (4096, 11008), "down-8b": (4096, 14336), "qkv-8b": (6144, 4096)}
    for name, (n, k) in shapes.items():
        for t in (3, 7, 17):
            m = re.search(rf"split-k {re.escape(name)}\s+T=\s*{t} .*?best: [\d.]+ split=(\d) bn=(\d+) bk=(\d+) w=\d st=(\d)",
                          text)
            split, bn, bk, st = (int(g) for g in m.groups())
            got = h100.linear_launch(t, n, k)
            assert (got.split_k, got.tile.block_n, got.tile.block_k, got.stages) == (split, bn, bk, st), (name, t)


def test_the_8b_gate_up_exception_comes_from_each_devices_tuning_file():
    h100, h200 = policy_for(H100), policy_for(H200)
    gate_up = dict(n=28672, k=4096, gated=True)
    assert h100.linear_launch(17, **gate_up).tile.block_k == 128 and h100.linear_launch(17, **gate_up).entry
    assert h100.linear_launch(7, **gate_up).tile == FEW_ROWS  # below 16 rows the H100 measured it slower
    assert h200.linear_launch(7, **gate_up).tile.block_k == 128
    assert h200.linear_launch(7, n=22016, k=4096, gated=True).entry is None  # the 7B gate/up: the rule
    # no code table keyed by a model shape: without the file the rule alone decides
    bare = KernelPolicy(H100)
    assert bare.linear_launch(17, **gate_up).tile == FEW_ROWS


def test_tuning_entries_match_on_their_facts(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"device": "X", "entries": [
        {"name": "wide", "kind": "linear", "match": {"n": 100, "min_rows": 4}, "launch": {"block_n": 32}}]}))
    tuning = Tuning.load(path)
    assert tuning.find("linear", rows=4, n=100, k=8, gated=False).name == "wide"
    assert tuning.find("linear", rows=3, n=100, k=8, gated=False) is None
    p = KernelPolicy.resolve("cuda", {"tuning_file": str(path)}, environ={}, props=H200)
    got = p.linear_launch(5, 100, 4096)
    assert got.tile == Tile(1, 32, 256, 4, 4)
    assert got.entry == "wide"


def test_a_one_row_entry_sets_the_one_row_launch_with_its_measured_stages(tmp_path):
    """An entry bounded by max_rows applies to those rows only; one for a single row replaces the
    one-row rule (its design included), and stages it names are kept as measured, where the rule
    would give a product of one wave of programs its shallower pipeline."""
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"device": "X", "entries": [
        {"name": "qkv one row", "kind": "linear", "match": {"n": 4608, "k": 3584, "gated": False, "min_rows": 1,
                                                            "max_rows": 1},
         "launch": {"design": 1, "block_n": 64, "block_k": 256, "warps": 4, "stages": 4}}]}))
    p = KernelPolicy.resolve("cuda", {"tuning_file": str(path)}, environ={}, props=H100)
    one = p.linear_launch(1, 4608, 3584)
    assert one.entry == "qkv one row" and one.tile == Tile(1, 64, 256, 4, 4) and one.stages == 4
    assert 4608 // 64 <= H100.sm_count  # one wave: the rule alone would have taken one_wave_stages
    assert p.linear_launch(2, 4608, 3584).entry is None  # past max_rows: the few-row rule
    assert p.linear_launch(2, 4608, 3584).stages == p.one_wave_stages
    assert p.linear_launch(1, 4096, 3584).tile == ONE_ROW  # another product: the one-row rule
    assert p.linear_launch(1, 4608, 3584, element_size=4).stages == 2  # float32 tiles: half, as the rule


# -- the decode plan reads rows, not tokens per sequence ------------------------------------------

def test_a_batched_plan_is_chosen_for_its_batch_x_tokens_rows():
    """A verify of 7 tokens for 16 sequences is a 112-row product: past the fused kernel's rows,
    so no norm folds into it and its products go to cuBLAS; the same 7 tokens for one sequence are
    fused. (On the H200 a plan built from the tokens per sequence alone launched the few-row tile
    for 112 rows and ran out of shared memory.)"""
    from triforce.models import tiny
    from triforce.decode_plan import build_plan
    from triforce.kernels.policy import MAX_ROWS, KernelContext

    ctx = KernelContext(KernelPolicy.resolve("cpu", {"kernels": True}))
    model = tiny.build_tiny()
    one, batch = build_plan(model, 7, 7, ctx, batch=1), build_plan(model, 7, 7, ctx, batch=16)
    assert 16 * 7 > MAX_ROWS >= 7 and batch.batch == 16 and "B=16" in repr(batch)
    assert "PreNormed" in repr(one) and "cuBLAS" not in repr(one)
    assert "PreNormed" not in repr(batch) and "cuBLAS" in repr(batch)
    assert not ctx.policy.fused(16 * 7) and ctx.policy.fused(2 * 7)
