"""Triton kernels of top_p.py (where the contract is; the torch definition is sampling.nucleus).
Imported only where the kernels run, so CPU runs never import Triton.

Two implementations of the same transform:

- `_top_p_kernel`: one program per row holds the row in registers and bisects on it (rows of up
  to MAX_VOCAB tokens; one launch, but one SM per row).
- the split path, for any vocabulary: every row is cut into chunks of BLOCK tokens, one program
  per (row, chunk), in four launches:

  1. `_stats_kernel`: each chunk's max and sum of exp (of the scaled logits);
  2. `_probs_kernel`: the row's max and normaliser from those partials, p = softmax written to
     the output, and a count histogram of the chunk's p by their float bit pattern (NUM_BINS bins
     of 1/16 octave below the row's largest p). The last program of a row to finish (an atomic
     counter) adds the chunks' histograms and picks a bracket [lo, hi] of bit patterns that
     should hold the threshold t*: the bins where the estimated mass above crosses top_p;
  3. `_compact_kernel`: each chunk adds up the exact mass of its p above the bracket and copies
     its p inside the bracket (the candidates) to a scratch row, at offsets fixed by the counts,
     so the order is deterministic. The last program of a row checks the bracket with exact masses
     (mass above hi < top_p <= mass above lo - 1) and bisects t* over the candidates only; if the
     check fails (the estimate missed) it bisects over the whole row instead: slower, as exact;
  4. `_finish_kernel`: keep p >= t*, divide by the kept mass.

Every sum is over a fixed set in a fixed order, so a seed reproduces a run exactly. Bisection is
over the bit patterns of non-negative floats (monotone in the value): t* is the smallest pattern
with G(t*) < top_p, G(t) = the mass strictly above t, and a token is kept iff p >= t*.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triforce.kernels.triton_pdl import pdl_args, pdl_start

BLOCK = 4096  # tokens per program of the split path
NUM_BINS = 512  # histogram bins: 1/16 octave each (SHIFT), 32 octaves; the last bin takes the rest
SHIFT = 19  # a bin is 2**SHIFT float bit patterns: 1/16 of an octave (23 mantissa bits - 4)
TILE = 8192  # candidates the final bisection holds in registers (more: it steps through them in tiles)


@triton.jit
def _top_p_kernel(LOGITS, OUT, V, inv_temperature, top_p, BLOCK: tl.constexpr, BISECT: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < V
    x = tl.load(LOGITS + row * V + cols, mask=ok, other=float("-inf")).to(tl.float32) * inv_temperature
    e = tl.exp(x - tl.max(x, 0))
    p = e / tl.sum(e, 0)
    if BISECT:
        # smallest bit pattern b (of a float in [0, 1]) with G(float(b)) < top_p
        lo = tl.zeros([], tl.int32)
        hi = tl.full([], 0x3F800000, tl.int32)  # 1.0: G(1.0) = 0 < top_p
        for _ in range(31):
            mid = lo + (hi - lo) // 2
            t = mid.to(tl.float32, bitcast=True)
            above = tl.sum(tl.where(p > t, p, 0.0), 0)
            below_p = above < top_p
            hi = tl.where(below_p, mid, hi)
            lo = tl.where(below_p, lo, mid + 1)
        threshold = hi.to(tl.float32, bitcast=True)
        p = tl.where(p >= threshold, p, 0.0)
        p = p / tl.sum(p, 0)
    tl.store(OUT + row * V + cols, p, mask=ok)


def top_p_probabilities(logits: torch.Tensor, temperature: float, top_p: float, *,
                        num_warps: int | None = None, pdl: bool = False) -> torch.Tensor:
    V = logits.shape[-1]
    rows = logits.numel() // V
    out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    block = triton.next_power_of_2(V)
    _top_p_kernel[(rows,)](logits, out, V, 1.0 / temperature, top_p, BLOCK=block, BISECT=top_p < 1.0,
                           num_warps=num_warps or 8,  # measured on an H100: 8 warps 35 us, 32 warps 42 us (32K)
                           **pdl_args(pdl))
    return out


# -- the split path ---------------------------------------------------------------------------------
# per-row int32 metadata (IMETA) and float32 metadata (FMETA)
_LO, _HI, _COUNT, _TOP, _THRESHOLD, _FULL = range(6)


@triton.jit
def _stats_kernel(LOGITS, PART_M, PART_S, COUNTERS, V, C, inv_temperature, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    row = tl.program_id(0)
    c = tl.program_id(1)
    cols = c * BLOCK + tl.arange(0, BLOCK)
    ok = cols < V
    x = tl.load(LOGITS + row * V + cols, mask=ok, other=float("-inf")).to(tl.float32) * inv_temperature
    m = tl.max(x, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)  # a chunk of -inf logits adds nothing
    tl.store(PART_M + row * C + c, m)
    tl.store(PART_S + row * C + c, tl.sum(tl.exp(x - m_safe), 0))
    if c == 0:  # the counters the later launches' last programs are found with
        two = tl.arange(0, 2)
        tl.store(COUNTERS + row * 2 + two, tl.zeros([2], tl.int32))


@triton.jit
def _last_of_row(COUNTERS, which, C):
    """Whether this program is the last of its row to get here (every program calls it once, after
    its stores): the usual "last block" pattern, an acq_rel atomic after a barrier."""
    tl.debug_barrier()  # every thread's stores precede the release
    return tl.atomic_add(COUNTERS + which, 1, sem="acq_rel") == C - 1


@triton.jit
def _choose_bracket(COUNTS, OFFSETS, IMETA, C, top_key, top_p, NUM_BINS: tl.constexpr, SHIFT: tl.constexpr,
                    GROUP: tl.constexpr):
    """The bins where the mass above crosses top_p, from the row's count histogram: estimated
    mass of a bin = count x the value at its middle, each p within +-2.2% of it (1/16 octave);
    the bracket keeps the bins whose estimated cumulative mass lies within a tolerance of top_p
    (a guaranteed bound or four standard deviations of the estimate, whichever is tighter), and
    the per-chunk offsets of their tokens in the candidate list."""
    bins = tl.arange(0, NUM_BINS)
    group = tl.arange(0, GROUP)  # chunks read per step: GROUP x NUM_BINS counts loaded at once
    counts = tl.zeros([NUM_BINS], tl.int32)
    c = 0
    while c < C:
        tile = tl.load(COUNTS + (c + group)[:, None] * NUM_BINS + bins[None, :], mask=(c + group < C)[:, None],
                       other=0, cache_modifier=".cg")
        counts += tl.sum(tile, 0)
        c += GROUP
    width = 1 << SHIFT
    upper_key = tl.maximum(top_key - bins * width, 0)
    lower_key = tl.where(bins == NUM_BINS - 1, 0, tl.maximum(top_key - (bins + 1) * width + 1, 0))
    upper = upper_key.to(tl.float32, bitcast=True)
    lower = lower_key.to(tl.float32, bitcast=True)
    mid = (lower_key + (upper_key - lower_key) // 2).to(tl.float32, bitcast=True)
    n = counts.to(tl.float32)
    cum_upper = tl.cumsum(n * upper, 0)  # mass of bins 0..b is within [cum_lower, cum_upper]
    cum_lower = tl.cumsum(n * lower, 0)
    cum_est = tl.cumsum(n * mid, 0)
    # tolerance of the estimate: a p uniform within its bin errs by 1.3% of itself (sd), summed
    tol = 0.052 * tl.sqrt(tl.cumsum(n * mid * mid, 0)) + 0.002 * cum_est
    surely_below = (cum_upper < top_p) | (cum_est + tol < top_p)  # bins 0..b hold less than top_p
    surely_above = (cum_lower >= top_p) | (cum_est - tol >= top_p)  # bins 0..b hold top_p or more
    b_hi = tl.max(tl.where(surely_below, bins, -1), 0)  # bins 0..b_hi: kept whatever t* is
    b_lo = tl.min(tl.where(surely_above, bins, NUM_BINS - 1), 0)  # t* is in bins b_hi+1..b_lo
    hi = top_key - (b_hi + 1) * width  # keys > hi are the bins 0..b_hi
    lo = tl.where(b_lo == NUM_BINS - 1, 0, tl.maximum(top_key - (b_lo + 1) * width + 1, 0))
    in_bracket = (bins > b_hi) & (bins <= b_lo)
    # exclusive prefix over the chunks of their candidate counts
    total = tl.zeros([], tl.int32)
    c = 0
    while c < C:
        ok = c + group < C
        tile = tl.load(COUNTS + (c + group)[:, None] * NUM_BINS + bins[None, :], mask=ok[:, None], other=0,
                       cache_modifier=".cg")
        mine = tl.sum(tl.where(in_bracket[None, :], tile, 0), 1)
        tl.store(OFFSETS + c + group, total + tl.cumsum(mine, 0) - mine, mask=ok)
        total += tl.sum(mine, 0)
        c += GROUP
    tl.store(IMETA + 0, lo)  # _LO
    tl.store(IMETA + 1, hi)  # _HI
    tl.store(IMETA + 2, total)  # _COUNT


@triton.jit
def _probs_kernel(LOGITS, OUT, PART_M, PART_S, COUNTERS, COUNTS, OFFSETS, IMETA, V, C, inv_temperature, top_p,
                  BLOCK: tl.constexpr, C_BLOCK: tl.constexpr, NUM_BINS: tl.constexpr, SHIFT: tl.constexpr,
                  BISECT: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    row = tl.program_id(0)
    c = tl.program_id(1)
    parts = tl.arange(0, C_BLOCK)
    part_ok = parts < C
    pm = tl.load(PART_M + row * C + parts, mask=part_ok, other=float("-inf"))
    ps = tl.load(PART_S + row * C + parts, mask=part_ok, other=0.0)
    m = tl.max(pm, 0)
    z = tl.sum(tl.where(ps > 0, ps * tl.exp(pm - m), 0.0), 0)
    cols = c * BLOCK + tl.arange(0, BLOCK)
    ok = cols < V
    x = tl.load(LOGITS + row * V + cols, mask=ok, other=float("-inf")).to(tl.float32) * inv_temperature
    p = tl.exp(x - m) / z
    tl.store(OUT + row * V + cols, p, mask=ok)
    if BISECT:
        top_key = (tl.exp(m - m) / z).to(tl.int32, bitcast=True)  # the largest p, computed as p is
        key = p.to(tl.int32, bitcast=True)
        bin_ = tl.minimum(tl.maximum(top_key - key, 0) >> SHIFT, NUM_BINS - 1)
        tl.store(COUNTS + (row * C + c) * NUM_BINS + tl.arange(0, NUM_BINS), tl.histogram(bin_, NUM_BINS, mask=ok))
        if _last_of_row(COUNTERS, row * 2, C):
            tl.store(IMETA + row * 8 + 3, top_key)  # _TOP
            _choose_bracket(COUNTS + row * C * NUM_BINS, OFFSETS + row * C, IMETA + row * 8, C, top_key, top_p,
                            NUM_BINS, SHIFT, 8)


@triton.jit
def _bisect(VALUES, n, base, lo, hi, top_p, TILE: tl.constexpr):
    """Smallest key t in [lo, hi] with base + (sum of the values with key > t) < top_p, given that
    hi satisfies it and every value of the row above hi is in `base`, every one in [lo, hi] among
    the n VALUES; returns (t, base + the sum of the values with key >= t)."""
    offs = tl.arange(0, TILE)
    kept = tl.zeros([], tl.float32)
    if n <= TILE:  # the candidates fit one tile: load them once
        vals = tl.load(VALUES + offs, mask=offs < n, other=0.0, cache_modifier=".cg")  # other programs' writes
        keys = vals.to(tl.int32, bitcast=True)
        while lo < hi:
            mid = lo + (hi - lo) // 2
            below = base + tl.sum(tl.where(keys > mid, vals, 0.0), 0) < top_p
            hi = tl.where(below, mid, hi)
            lo = tl.where(below, lo, mid + 1)
        kept = base + tl.sum(tl.where(keys >= hi, vals, 0.0), 0)
    else:
        while lo < hi:
            mid = lo + (hi - lo) // 2
            g = base
            i = 0
            while i < n:
                tile = tl.load(VALUES + i + offs, mask=i + offs < n, other=0.0, cache_modifier=".cg")
                g += tl.sum(tl.where(tile.to(tl.int32, bitcast=True) > mid, tile, 0.0), 0)
                i += TILE
            below = g < top_p
            hi = tl.where(below, mid, hi)
            lo = tl.where(below, lo, mid + 1)
        kept = base
        i = 0
        while i < n:
            tile = tl.load(VALUES + i + offs, mask=i + offs < n, other=0.0, cache_modifier=".cg")
            kept += tl.sum(tl.where(tile.to(tl.int32, bitcast=True) >= hi, tile, 0.0), 0)
            i += TILE
    return hi, kept


@triton.jit
def _mass(VALUES, n, TILE: tl.constexpr):
    offs = tl.arange(0, TILE)
    total = tl.zeros([], tl.float32)
    i = 0
    while i < n:
        total += tl.sum(tl.load(VALUES + i + offs, mask=i + offs < n, other=0.0, cache_modifier=".cg"), 0)
        i += TILE
    return total


@triton.jit
def _compact_kernel(OUT, SCRATCH, COUNTERS, OFFSETS, FIXED, SPAN, IMETA, FMETA, V, C, top_p,
                    BLOCK: tl.constexpr, C_BLOCK: tl.constexpr, TILE: tl.constexpr, FORCE_FULL: tl.constexpr,
                    PDL: tl.constexpr):
    pdl_start(PDL)
    row = tl.program_id(0)
    c = tl.program_id(1)
    lo = tl.load(IMETA + row * 8 + 0)
    hi = tl.load(IMETA + row * 8 + 1)
    cols = c * BLOCK + tl.arange(0, BLOCK)
    ok = cols < V
    p = tl.load(OUT + row * V + cols, mask=ok, other=0.0)
    key = p.to(tl.int32, bitcast=True)
    tl.store(FIXED + row * C + c, tl.sum(tl.where(ok & (key > hi), p, 0.0), 0))
    cand = ok & (key >= lo) & (key <= hi)
    slot = tl.load(OFFSETS + row * C + c) + tl.cumsum(cand.to(tl.int32), 0) - 1
    tl.store(SCRATCH + row * V + slot, p, mask=cand)
    # the span of the chunk's candidate keys (the bisection needs only the candidates' span)
    tl.store(SPAN + (row * C + c) * 2, tl.min(tl.where(cand, key, 0x7F800000), 0))
    tl.store(SPAN + (row * C + c) * 2 + 1, tl.max(tl.where(cand, key, -1), 0))
    if _last_of_row(COUNTERS, row * 2 + 1, C):
        parts = tl.arange(0, C_BLOCK)
        fixed = tl.sum(tl.load(FIXED + row * C + parts, mask=parts < C, other=0.0, cache_modifier=".cg"), 0)
        n = tl.load(IMETA + row * 8 + 2)
        candidates = _mass(SCRATCH + row * V, n, TILE)
        good = (fixed < top_p) & (fixed + candidates >= top_p)  # t* is in [lo, hi]
        if FORCE_FULL:
            good = good & (n < 0)
        if good:
            # G(hi) = fixed also at the largest candidate key, and G(lo - 1) >= top_p also at the
            # smallest: bisect between them (no step at all when every candidate is tied)
            first = tl.min(tl.load(SPAN + (row * C + parts) * 2, mask=parts < C, other=0x7F800000,
                                   cache_modifier=".cg"), 0)
            last = tl.max(tl.load(SPAN + (row * C + parts) * 2 + 1, mask=parts < C, other=-1,
                                  cache_modifier=".cg"), 0)
            t, kept = _bisect(SCRATCH + row * V, n, fixed, tl.maximum(lo, first), tl.minimum(hi, last), top_p, TILE)
        else:  # the estimate missed the threshold: bisect over the whole row (exact, slower)
            top = tl.load(IMETA + row * 8 + 3)
            t, kept = _bisect(OUT + row * V, V, tl.zeros([], tl.float32), tl.zeros([], tl.int32), top, top_p, TILE)
        tl.store(IMETA + row * 8 + 4, t)  # _THRESHOLD
        tl.store(IMETA + row * 8 + 5, tl.where(good, 0, 1))  # _FULL: which bisection ran (diagnostics)
        tl.store(FMETA + row * 2, kept)  # _KEPT


@triton.jit
def _finish_kernel(OUT, IMETA, FMETA, V, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    row = tl.program_id(0)
    c = tl.program_id(1)
    t = tl.load(IMETA + row * 8 + 4)
    kept = tl.load(FMETA + row * 2)
    cols = c * BLOCK + tl.arange(0, BLOCK)
    ok = cols < V
    p = tl.load(OUT + row * V + cols, mask=ok, other=0.0)
    tl.store(OUT + row * V + cols, tl.where(p.to(tl.int32, bitcast=True) >= t, p / kept, 0.0), mask=ok)


def top_p_split(logits: torch.Tensor, temperature: float, top_p: float, *, block: int = BLOCK,
                num_warps: int = 8, force_full: bool = False, diagnostics: dict | None = None,
                pdl: bool = False) -> torch.Tensor:
    """The split path (see the module docstring). force_full: always bisect over the whole row
    (tests of the fallback). diagnostics: a dict to receive, per row, the number of candidates and
    whether the whole-row bisection ran (device tensors; tuning). 8 warps: the last program holds
    up to TILE candidates in registers (128 registers per thread, no spills: scripts/compile_kernels.py)."""
    V = logits.shape[-1]
    rows = logits.numel() // V
    C = triton.cdiv(V, block)
    c_block = max(2, triton.next_power_of_2(C))
    bisect = top_p < 1.0
    out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    floats = torch.empty(rows * (3 * C + 2 + (V if bisect else 0)), dtype=torch.float32, device=logits.device)
    ints = torch.empty(rows * (2 + 8 + 3 * C + (C * NUM_BINS if bisect else 0)), dtype=torch.int32,
                       device=logits.device)
    part_m, part_s, fixed, fmeta, scratch = floats.split([rows * C, rows * C, rows * C, rows * 2,
                                                          rows * V if bisect else 0])
    counters, imeta, offsets, span, counts = ints.split([rows * 2, rows * 8, rows * C, rows * C * 2,
                                                         rows * C * NUM_BINS if bisect else 0])
    grid = (rows, C)
    inv_t = 1.0 / temperature
    pdl = pdl_args(pdl)
    _stats_kernel[grid](logits, part_m, part_s, counters, V, C, inv_t, BLOCK=block, num_warps=num_warps, **pdl)
    _probs_kernel[grid](logits, out, part_m, part_s, counters, counts, offsets, imeta, V, C, inv_t, top_p,
                        BLOCK=block, C_BLOCK=c_block, NUM_BINS=NUM_BINS, SHIFT=SHIFT, BISECT=bisect,
                        num_warps=num_warps, **pdl)
    if bisect:
        _compact_kernel[grid](out, scratch, counters, offsets, fixed, span, imeta, fmeta, V, C, top_p,
                              BLOCK=block, C_BLOCK=c_block, TILE=TILE, FORCE_FULL=force_full, num_warps=num_warps,
                              **pdl)
        _finish_kernel[grid](out, imeta, fmeta, V, BLOCK=block, num_warps=num_warps, **pdl)
        if diagnostics is not None:
            meta = imeta.view(rows, 8)
            diagnostics.update(candidates=meta[:, _COUNT], full_row=meta[:, _FULL].bool())
    return out
