"""Sampling transforms and the exact speculative verification rule (triforce.sampling).

`verify` is checked against the analytic distribution of its outcome (num_accepted, next_token):
for proposals x_1..x_k drawn from q_1..q_k and a_i = min(1, p_i(x_i)/q_i(x_i)),

    P(n = j, next = y) = a_1...a_{j-1} (1 - a_j) r_j(y),   r_j = norm(max(0, p_j - q_j)),  j < k
    P(n = k, next = y) = a_1...a_k p_{k+1}(y)

and, summed over x ~ q (k = 1), the emitted token is distributed exactly as p_1. The empirical
side uses a few thousand seeded calls per example; thresholds (chi-square p-value 1e-6) make a
false failure negligible while a wrong formula (e.g. the biased residual=False rule) is caught.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from triforce.errors import ConfigError
from triforce.sampling import SamplingParams, probabilities, sample, verify

P_MIN = 1e-6  # chi-square p-value below which an empirical check fails
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def chi2_pvalue(counts: dict, expected: dict, n: int) -> float:
    """Pearson chi-square p-value of observed `counts` against probabilities `expected`.

    Cells with expected count < 5 are merged into one; an observation in a cell of probability 0
    returns 0.0 (impossible outcome)."""
    if any(expected.get(c, 0.0) <= 0 for c in counts):
        return 0.0
    big = [c for c, pr in expected.items() if pr * n >= 5]
    small = [c for c, pr in expected.items() if pr * n < 5 and pr > 0]
    obs = [counts.get(c, 0) for c in big]
    exp = [expected[c] * n for c in big]
    if small and sum(expected[c] for c in small) * n > 0:
        obs.append(sum(counts.get(c, 0) for c in small))
        exp.append(sum(expected[c] for c in small) * n)
    if len(obs) < 2:
        return 1.0
    obs, exp = np.array(obs, float), np.array(exp, float)
    stat = float(((obs - exp) ** 2 / exp).sum())
    return float(stats.chi2.sf(stat, len(obs) - 1))


# -- SamplingParams ------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1)])
def test_sampling_params_reject_invalid_values(kw):
    with pytest.raises(ConfigError):
        SamplingParams(**kw)


def test_greedy_is_temperature_zero():
    assert SamplingParams(temperature=0).greedy
    assert not SamplingParams(temperature=0.6).greedy


# -- probabilities -------------------------------------------------------------------------

def test_greedy_is_one_hot_at_argmax_even_with_minus_inf_logits():
    logits = torch.randn(4, 9, generator=torch.Generator().manual_seed(0))
    logits[0, :5] = float("-inf")
    logits[1, 3] = float("-inf")
    for params in [SamplingParams(0.0), SamplingParams(0.0, top_p=0.5, top_k=2)]:
        probs = probabilities(logits, params)
        assert probs.dtype == torch.float32
        assert not probs.isnan().any()
        torch.testing.assert_close(probs, torch.nn.functional.one_hot(logits.argmax(-1), 9).float())


def test_minus_inf_logits_get_zero_probability_and_no_nan():
    logits = torch.tensor([[0.3, float("-inf"), 1.2, float("-inf"), -0.5]])
    for params in [SamplingParams(1.0, 1.0), SamplingParams(0.6, 0.9), SamplingParams(0.7, 1.0, top_k=2),
                   SamplingParams(1.0, 0.3, top_k=4)]:
        probs = probabilities(logits, params)
        assert not probs.isnan().any()
        assert probs[0, 1] == 0 and probs[0, 3] == 0
        torch.testing.assert_close(probs.sum(-1), torch.ones(1))


def test_temperature_only_is_softmax_of_scaled_logits():
    logits = torch.randn(3, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in (0.3, 1.0, 2.5):
        probs = probabilities(logits, SamplingParams(temperature=t, top_p=1.0))
        torch.testing.assert_close(probs, torch.softmax(logits / t, -1).float())


def test_half_precision_logits_give_float32_probabilities():
    logits = torch.randn(2, 6, generator=torch.Generator().manual_seed(2)).half()
    probs = probabilities(logits, SamplingParams(0.8, 0.95))
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


@pytest.mark.parametrize("k", [1, 2, 5])
def test_top_k_keeps_the_k_largest_renormalised(k):
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(k))  # distinct values
    probs = probabilities(logits, SamplingParams(temperature=0.7, top_p=1.0, top_k=k))
    top = logits.topk(k, -1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top, True)
    assert ((probs > 0) == keep).all()
    ref = torch.softmax((logits / 0.7).masked_fill(~keep, float("-inf")), -1)
    torch.testing.assert_close(probs, ref)


def test_top_k_at_least_vocab_is_a_no_op():
    logits = torch.randn(2, 6, generator=torch.Generator().manual_seed(3))
    base = probabilities(logits, SamplingParams(0.9, 1.0))
    for k in (6, 50):
        torch.testing.assert_close(probabilities(logits, SamplingParams(0.9, 1.0, top_k=k)), base)


def _top_p_reference(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Smallest set of most likely tokens whose mass reaches top_p (the top-1 always stays)."""
    order = np.argsort(-probs, kind="stable")
    before = np.concatenate([[0.0], np.cumsum(probs[order])[:-1]])
    keep = np.zeros_like(probs, dtype=bool)
    keep[order[before < top_p]] = True
    out = np.where(keep, probs, 0.0)
    return out / out.sum()


@SETTINGS
@given(logits=st.lists(st.floats(-4, 4), min_size=2, max_size=12),
       top_p=st.floats(0.05, 0.99), temperature=st.floats(0.3, 2.0))
def test_top_p_keeps_the_smallest_set_covering_top_p(logits, top_p, temperature):
    x = torch.tensor(logits, dtype=torch.float64)
    full = torch.softmax(x / temperature, -1).numpy()
    # the reference runs in float64, the function in float32: skip sets decided within rounding
    s = np.sort(full)[::-1]
    before = np.concatenate([[0.0], np.cumsum(s)[:-1]])
    assume(np.abs(before - top_p).min() > 1e-4)
    assume(len(np.unique(np.round(full, 6))) == len(full))  # no ties at the cut
    probs = probabilities(x, SamplingParams(temperature=temperature, top_p=top_p)).double().numpy()
    ref = _top_p_reference(full, top_p)
    assert ((probs > 0) == (ref > 0)).all()
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    # it covers top_p, and dropping its least likely token would not
    kept = full[ref > 0]
    assert kept.sum() >= top_p - 1e-9
    assert len(kept) == 1 or kept.sum() - kept.min() < top_p


def test_top_p_tiny_keeps_only_the_top_token():
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    probs = probabilities(logits, SamplingParams(1.0, top_p=1e-6))
    torch.testing.assert_close(probs, torch.nn.functional.one_hot(logits.argmax(-1), 8).float())


def test_top_k_then_top_p():
    logits = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.0, -1.0])
    probs = probabilities(logits, SamplingParams(1.0, top_p=0.8, top_k=4)).double().numpy()
    k4 = torch.softmax(logits[:4].double(), -1).numpy()  # top-4 renormalised: .46, .28, .17, .06
    ref = _top_p_reference(np.concatenate([k4, [0, 0]]), 0.8)
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    assert (probs > 0).sum() == 3


@pytest.mark.parametrize("params", [SamplingParams(0.0), SamplingParams(1.0, 1.0), SamplingParams(0.6, 0.9),
                                    SamplingParams(1.3, 0.5, top_k=3)])
def test_rows_sum_to_one_for_any_batch_shape(params):
    logits = 3 * torch.randn(2, 3, 17, generator=torch.Generator().manual_seed(5))
    probs = probabilities(logits, params)
    assert probs.shape == logits.shape
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3))


# -- sample --------------------------------------------------------------------------------

def test_sample_shape_and_reproducibility():
    probs = torch.softmax(torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(6)), -1)
    a = sample(probs, torch.Generator().manual_seed(11))
    b = sample(probs, torch.Generator().manual_seed(11))
    assert a.shape == (2, 3) and torch.equal(a, b)
    one_hot = torch.nn.functional.one_hot(torch.tensor([4, 0, 6]), 7).float()
    assert sample(one_hot, torch.Generator().manual_seed(0)).tolist() == [4, 0, 6]


# -- verify: analytic outcome distribution ---------------------------------------------------

def outcome_distribution(tokens, q: np.ndarray, p: np.ndarray, residual: bool = True) -> dict:
    """Exact P(num_accepted = n, next_token = y) of verify() for fixed proposals (float64)."""
    k, vocab = q.shape
    out: dict[tuple[int, int], float] = {}
    reach = 1.0  # probability that the first j proposals were all accepted
    for j in range(k):
        x = tokens[j]
        a = min(1.0, p[j, x] / q[j, x])
        if a < 1:
            if residual:
                r = np.maximum(p[j] - q[j], 0.0)
                r = r / r.sum() if r.sum() > 0 else p[j]  # as verify(): only rounding empties it
            else:
                r = p[j]
            for y in range(vocab):
                if r[y] > 0:
                    out[(j, y)] = out.get((j, y), 0.0) + reach * (1 - a) * r[y]
        reach *= a
    for y in range(vocab):
        if p[k, y] > 0:
            out[(k, y)] = out.get((k, y), 0.0) + reach * p[k, y]
    return out


def dist_strategy(vocab: int, allow_zeros: bool = True):
    lo = 0.0 if allow_zeros else 0.02
    return st.lists(st.floats(lo, 1.0), min_size=vocab, max_size=vocab).filter(lambda w: sum(w) > 0.05)


def normalise(rows) -> np.ndarray:
    a = np.array(rows, dtype=np.float64)
    a = a / a.sum(-1, keepdims=True)
    # round-trip through float32 so the analytic side sees the tensors verify() sees
    return torch.tensor(a, dtype=torch.float32).double().numpy()


@st.composite
def verify_case(draw, max_k: int = 3, max_vocab: int = 4):
    vocab = draw(st.integers(2, max_vocab))
    k = draw(st.integers(1, max_k))
    q = normalise([draw(dist_strategy(vocab)) for _ in range(k)])
    p = normalise([draw(dist_strategy(vocab)) for _ in range(k + 1)])
    # each proposal must be a token its q could have drawn
    tokens = [draw(st.sampled_from([t for t in range(vocab) if q[i, t] > 0])) for i in range(k)]
    return tokens, q, p


def run_verify(tokens, q, p, n: int, seed: int, residual: bool = True) -> dict:
    gen = torch.Generator().manual_seed(seed)
    t, qt, pt = torch.tensor(tokens), torch.tensor(q, dtype=torch.float32), torch.tensor(p, dtype=torch.float32)
    counts: dict[tuple[int, int], int] = {}
    for _ in range(n):
        v = verify(t, qt, pt, gen, residual=residual)
        counts[(v.num_accepted, v.next_token)] = counts.get((v.num_accepted, v.next_token), 0) + 1
    return counts


def test_outcome_formula_reproduces_speculative_sampling_theorem():
    """The analytic formula itself: for x ~ q the emitted token is distributed as p (k = 1)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        vocab = int(rng.integers(2, 7))
        q = normalise([rng.dirichlet(np.ones(vocab) * 0.5)])
        p = normalise(rng.dirichlet(np.ones(vocab) * 0.5, size=2))
        emitted = np.zeros(vocab)
        for x in range(vocab):
            if q[0, x] == 0:
                continue
            for (n, y), pr in outcome_distribution([x], q, p).items():
                emitted[x if n == 1 else y] += q[0, x] * pr
        np.testing.assert_allclose(emitted, p[0], atol=1e-6)  # rows are float32-rounded


@SETTINGS
@given(case=verify_case(), seed=st.integers(0, 2**31 - 1))
def test_verify_outcomes_match_the_analytic_distribution(case, seed):
    tokens, q, p = case
    n = 2000
    expected = outcome_distribution(tokens, q, p)
    counts = run_verify(tokens, q, p, n, seed)
    assert chi2_pvalue(counts, expected, n) > P_MIN, (counts, expected)


@SETTINGS
@given(vocab=st.integers(2, 4), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_emitted_token_is_distributed_as_p_when_proposal_is_drawn_from_q(vocab, data, seed):
    """End to end for k = 1: draw x ~ q, verify; the emitted token must follow p_1 exactly, and
    the full outcome (x, n, next) must follow q(x) P(n, next | x)."""
    q = normalise([data.draw(dist_strategy(vocab))])
    p = normalise([data.draw(dist_strategy(vocab)) for _ in range(2)])
    gen = torch.Generator().manual_seed(seed)
    qt, pt = torch.tensor(q, dtype=torch.float32), torch.tensor(p, dtype=torch.float32)
    n = 2000
    emitted: dict[int, int] = {}
    full: dict[tuple[int, int, int], int] = {}
    for _ in range(n):
        x = sample(qt[0], gen).reshape(1)
        v = verify(x, qt, pt, gen)
        first = int(x) if v.num_accepted == 1 else v.next_token
        emitted[first] = emitted.get(first, 0) + 1
        key = (int(x), v.num_accepted, v.next_token)
        full[key] = full.get(key, 0) + 1
    expected_full = {(x, *o): q[0, x] * pr for x in range(vocab) if q[0, x] > 0
                     for o, pr in outcome_distribution([x], q, p).items()}
    assert chi2_pvalue(emitted, {t: p[0, t] for t in range(vocab)}, n) > P_MIN, (emitted, p[0])
    assert chi2_pvalue(full, expected_full, n) > P_MIN


# -- verify: deterministic cases --------------------------------------------------------------

def one_hot_rows(ids, vocab=5) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(ids), vocab).float()


@pytest.mark.parametrize("first_mismatch", [0, 1, 2, 3])
def test_greedy_accepts_while_argmax_matches(first_mismatch):
    """One-hot q and p: accept exactly while the argmaxes agree, then emit p's argmax."""
    k = 3
    draft = [1, 4, 2]
    target = [1, 4, 2, 3]  # target[k] is the bonus
    if first_mismatch < k:
        target[first_mismatch] = 0
    q, p = one_hot_rows(draft), one_hot_rows(target)
    for seed in range(20):
        v = verify(torch.tensor(draft), q, p, torch.Generator().manual_seed(seed))
        assert (v.num_accepted, v.next_token) == (first_mismatch, target[first_mismatch])


def test_all_accepted_emits_a_bonus_sample_of_the_last_row():
    q = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    bonus = torch.tensor([0.1, 0.0, 0.9])
    p = torch.cat([q, bonus[None]])  # p = q: every proposal is accepted
    gen = torch.Generator().manual_seed(0)
    counts = [0, 0, 0]
    for _ in range(2000):
        v = verify(torch.tensor([1, 2]), q, p, gen)
        assert v.num_accepted == 2
        counts[v.next_token] += 1
    assert counts[1] == 0
    assert chi2_pvalue({i: c for i, c in enumerate(counts) if c}, {0: 0.1, 2: 0.9}, 2000) > P_MIN


def test_token_with_zero_target_probability_is_always_rejected():
    q = torch.tensor([[0.5, 0.5, 0.0]])
    p = torch.tensor([[0.0, 0.4, 0.6], [1.0, 0.0, 0.0]])
    for seed in range(50):
        v = verify(torch.tensor([0]), q, p, torch.Generator().manual_seed(seed))
        assert v.num_accepted == 0
        assert v.next_token == 2  # residual max(0, p - q) = [0, 0, .6]


def test_same_seed_gives_the_same_verdicts():
    rng = torch.Generator().manual_seed(7)
    q = torch.softmax(torch.randn(4, 6, generator=rng), -1)
    p = torch.softmax(torch.randn(5, 6, generator=rng), -1)
    tokens = torch.tensor([0, 3, 5, 1])

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return [verify(tokens, q, p, gen) for _ in range(30)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_biased_rule_on_the_design_example():
    """docs/DESIGN.md §2: p = [.5, .5], q = [1, 0]. Exact: the emitted token is [.5, .5]; resampling
    from p instead of the residual (residual=False) gives [.75, .25]."""
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    exact = outcome_distribution([0], q.double().numpy(), p.double().numpy())
    biased = outcome_distribution([0], q.double().numpy(), p.double().numpy(), residual=False)

    def first_token(dist):
        m = [0.0, 0.0]
        for (n, y), pr in dist.items():
            m[0 if n == 1 else y] += pr
        return m

    assert first_token(exact) == pytest.approx([0.5, 0.5])
    assert first_token(biased) == pytest.approx([0.75, 0.25])
    n = 4000
    for residual, target in [(True, exact), (False, biased)]:
        counts = run_verify([0], q.numpy(), p.numpy(), n, seed=0, residual=residual)
        assert chi2_pvalue(counts, target, n) > P_MIN
        share = sum(c for (acc, y), c in counts.items() if acc == 1 or y == 0) / n
        assert share == pytest.approx(first_token(target)[0], abs=0.03)
    # and the empirical biased outcomes are clearly rejected against the exact law
    counts = run_verify([0], q.numpy(), p.numpy(), n, seed=1, residual=False)
    assert chi2_pvalue(counts, exact, n) < 1e-12


@pytest.mark.parametrize("k", [1, 2, 3])
def test_biased_rule_is_detected_by_the_empirical_check(k):
    """Sensitivity of the statistical check used above: residual=False differs from the exact
    law whenever some q_i puts mass where p_i has less."""
    rng = np.random.default_rng(k)
    q = normalise(rng.dirichlet(np.ones(4) * 0.3, size=k))
    p = normalise(rng.dirichlet(np.ones(4) * 0.3, size=k + 1))
    tokens = [int(np.argmax(q[i] - p[i])) for i in range(k)]  # proposals likely to be rejected
    for i in range(k):
        assert q[i, tokens[i]] > p[i, tokens[i]]
    n = 3000
    counts = run_verify(tokens, q, p, n, seed=k, residual=False)
    assert chi2_pvalue(counts, outcome_distribution(tokens, q, p), n) < 1e-6
    assert chi2_pvalue(counts, outcome_distribution(tokens, q, p, residual=False), n) > P_MIN


def test_outcome_enumeration_is_complete():
    """Sanity of the reference: outcome probabilities sum to one."""
    rng = np.random.default_rng(3)
    for k, vocab in itertools.product([1, 2, 3], [2, 5]):
        q = normalise(rng.dirichlet(np.ones(vocab), size=k))
        p = normalise(rng.dirichlet(np.ones(vocab), size=k + 1))
        tokens = [int(rng.integers(vocab)) for _ in range(k)]
        assert sum(outcome_distribution(tokens, q, p).values()) == pytest.approx(1.0, abs=1e-6)


# -- the device path: sample_into / verify_into with the race kernel (Triton's interpreter) ------

def _race_kernels():
    """The context that runs the Triton kernels on CPU tensors (through the interpreter)."""
    from triforce.kernels import triton_available
    from triforce.kernels.policy import KernelContext, KernelPolicy

    if not triton_available():
        pytest.skip("Triton is not installed")
    return KernelContext(KernelPolicy.resolve("cpu", {"kernels": True}))


def race_outcome_counts(tokens, q, p, n: int, seed: int, residual: bool = True) -> list[dict]:
    """Per-row outcome counts of n independent verifications by the race rule's torch twin
    (race_verify_reference), drawn at once: tokens (k,) or a batch (B, k); u (n, [B,] k) and the
    races (n, [B,] V) from one generator."""
    from triforce.kernels.verify import race_verify_reference

    t = torch.tensor(tokens)
    t = t[None] if t.dim() == 1 else t
    qt, pt = torch.tensor(q, dtype=torch.float32), torch.tensor(p, dtype=torch.float32)
    qt, pt = (qt[None], pt[None]) if qt.dim() == 2 else (qt, pt)
    (B, k), V = t.shape, pt.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    u, race = torch.rand(n, B, k, generator=gen), torch.empty(n, B, V).exponential_(generator=gen)
    out = race_verify_reference(t.expand(n, B, k).reshape(n * B, k), qt.expand(n, B, k, V).reshape(n * B, k, V),
                                pt.expand(n, B, k + 1, V).reshape(n * B, k + 1, V), u.reshape(n * B, k),
                                race.reshape(n * B, V), residual=residual).reshape(n, B, 2 + k)
    counts: list[dict] = [{} for _ in range(B)]
    for b in range(B):
        for key in map(tuple, out[:, b, :2].tolist()):
            counts[b][key] = counts[b].get(key, 0) + 1
    return counts


def check_race_kernel_equals_its_reference(tokens, q, p, calls: int, seed: int, residual: bool = True) -> set:
    """verify_into through the race kernel (Triton's interpreter), call after call from one
    generator, returns and writes exactly what race_verify_reference gives on the same draws (u, then
    the race, in verify_into's order): the kernel's outcome law is then its reference's, which the
    tests check statistically (race_outcome_counts), without thousands of interpreted launches.
    Returns the outcomes (row, num_accepted, next token) the calls went through."""
    from triforce.kernels.verify import race_verify_reference
    from triforce.sampling import verify_into

    ctx = _race_kernels()
    t, qt, pt = torch.tensor(tokens), torch.tensor(q, dtype=torch.float32), torch.tensor(p, dtype=torch.float32)
    k, V = t.shape[-1], pt.shape[-1]
    gen, twin = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    seen = set()
    for _ in range(calls):
        if t.dim() == 1:  # one sequence: proposals at buffer[1:1 + k], the token written at 1 + n
            buffer = torch.zeros(k + 4, dtype=torch.int64)
            buffer[1:1 + k] = t
            out = verify_into(buffer[1:1 + k], qt, pt, gen, buffer, 1, residual=residual, ctx=ctx)
            rows, written = out[None], [int(buffer[1 + int(out[0])])]
        else:  # a batch: sequence b's proposals at buffer[b, 1 + b:], its token at its own base + n_b
            B = t.shape[0]
            buffer = torch.zeros(B, k + B + 3, dtype=torch.int64)
            base = torch.arange(B) + 1
            for b in range(B):
                buffer[b, 1 + b:1 + b + k] = t[b]
            out = verify_into(t, qt, pt, gen, buffer, base, residual=residual, ctx=ctx)
            rows, written = out, [int(buffer[b, 1 + b + int(out[b, 0])]) for b in range(B)]
        u = torch.rand(tuple(t.shape), generator=twin)
        race = torch.empty(*t.shape[:-1], V).exponential_(generator=twin)
        assert out.tolist() == race_verify_reference(t, qt, pt, u, race, residual=residual).tolist()
        for b, row in enumerate(rows.tolist()):
            assert written[b] == row[1] and row[2:] == t.reshape(-1, k)[b].tolist()
            seen.add((b, row[0], row[1]))
    return seen


@pytest.mark.parametrize("seed", [0, 1])
def test_race_kernel_verification_matches_the_analytic_distribution(seed):
    """The GPU path's verification rule (the exponential race) against the exact outcome law, on
    random cases with rejections and bonus tokens, and the biased rule (resampling from p) detected;
    the race kernel (Triton's interpreter) computes that rule draw for draw."""
    rng = np.random.default_rng(seed)
    k, vocab = 3, 4
    q = normalise(rng.dirichlet(np.ones(vocab) * 0.5, size=k))
    p = normalise(rng.dirichlet(np.ones(vocab) * 0.5, size=k + 1))
    tokens = [int(rng.choice(vocab, p=q[i] / q[i].sum())) for i in range(k)]
    n = 20_000
    counts = race_outcome_counts(tokens, q, p, n, seed)[0]
    assert chi2_pvalue(counts, outcome_distribution(tokens, q, p), n) > P_MIN, counts
    seen = check_race_kernel_equals_its_reference(tokens, q, p, 60, seed)
    assert len({n for _, n, _ in seen}) >= 2  # the calls took different numbers of proposals
    if seed == 0:
        q1 = np.array([[1.0, 0.0]])
        p1 = np.array([[0.5, 0.5], [0.5, 0.5]])
        biased = race_outcome_counts([0], q1, p1, 1000, seed, residual=False)[0]
        assert chi2_pvalue(biased, outcome_distribution([0], q1, p1), 1000) < 1e-6
        check_race_kernel_equals_its_reference([0], q1, p1, 20, seed, residual=False)


def test_race_kernel_sampling_matches_probs():
    """The race over probs picks i with probability probs_i (never a zero), and sample_into's race
    kernel (Triton's interpreter) picks what the race's reference picks on the same draws."""
    from triforce.kernels.verify import race_sample_reference
    from triforce.sampling import sample_into

    probs = torch.tensor([0.1, 0.0, 0.5, 0.15, 0.25])
    n = 30_000
    races = torch.empty(n, 5).exponential_(generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(race_sample_reference(probs.expand(n, 5), races), minlength=5).tolist()
    assert counts[1] == 0
    assert chi2_pvalue({i: c for i, c in enumerate(counts) if c}, {i: float(v) for i, v in enumerate(probs) if v > 0},
                       n) > P_MIN
    gen, twin = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    buffer = torch.zeros(4, dtype=torch.int64)
    ctx = _race_kernels()
    picked = set()
    for _ in range(60):
        sample_into(probs, gen, buffer, 2, ctx=ctx)
        expected = int(race_sample_reference(probs, torch.empty(5).exponential_(generator=twin)))
        assert int(buffer[2]) == expected
        picked.add(expected)
    assert len(picked) >= 3


# -- batches: B sequences verified / sampled at once ------------------------------------------------

def batch_case(seed: int, k: int = 2, vocab: int = 4, batch: int = 2):
    """B rows of one shape, each its own random (q, p) with proposals likely to be rejected (for
    seeds 0 and 1 every row's biased law is far from its exact one: total variation 0.29 to 0.84)."""
    rng = np.random.default_rng(seed)
    q = np.stack([normalise(rng.dirichlet(np.ones(vocab) * 0.4, size=k)) for _ in range(batch)])
    p = np.stack([normalise(rng.dirichlet(np.ones(vocab) * 0.4, size=k + 1)) for _ in range(batch)])
    tokens = [[int(np.argmax(q[b, i] - p[b, i])) if (b + i) % 2 == 0
               else int(rng.choice(vocab, p=q[b, i] / q[b, i].sum())) for i in range(k)] for b in range(batch)]
    return tokens, q, p


def run_verify_batch(tokens, q, p, n: int, seed: int, *, residual: bool = True) -> list[dict]:
    """Per-row outcome counts of n batched verify_tensor calls (the CPU rule)."""
    from triforce.sampling import verify_tensor

    gen = torch.Generator().manual_seed(seed)
    t, qt, pt = torch.tensor(tokens), torch.tensor(q, dtype=torch.float32), torch.tensor(p, dtype=torch.float32)
    counts: list[dict] = [{} for _ in range(t.shape[0])]
    for _ in range(n):
        for b, row in enumerate(verify_tensor(t, qt, pt, gen, residual=residual).tolist()):
            counts[b][(row[0], row[1])] = counts[b].get((row[0], row[1]), 0) + 1
    return counts


def check_rows_follow_the_law(tokens, q, p, counts: list[dict], n: int) -> None:
    for b, row_counts in enumerate(counts):
        expected = outcome_distribution(tokens[b], q[b], p[b])
        assert chi2_pvalue(row_counts, expected, n) > P_MIN, (b, row_counts, expected)


def check_bias_detected(tokens, q, p, counts: list[dict], n: int) -> None:
    for b, row_counts in enumerate(counts):
        assert chi2_pvalue(row_counts, outcome_distribution(tokens[b], q[b], p[b]), n) < 1e-6, b
        assert chi2_pvalue(row_counts, outcome_distribution(tokens[b], q[b], p[b], residual=False), n) > P_MIN, b


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_verification_rows_each_follow_the_analytic_law(seed):
    """verify_tensor over a batch of 2 (the CPU reference rule, vectorised over the rows): each row's
    outcomes follow the exact law of its own (q, p, proposals), and the biased rule is caught in
    every row."""
    tokens, q, p = batch_case(seed)
    n = 2000
    check_rows_follow_the_law(tokens, q, p, run_verify_batch(tokens, q, p, n, seed), n)
    check_bias_detected(tokens, q, p, run_verify_batch(tokens, q, p, 3000, seed + 7, residual=False), 3000)


def test_batched_race_kernel_verification_rows_each_follow_the_analytic_law():
    """The same for a batch of 2: the race rule's rows each follow their own exact law and the
    biased rule is detected in every row; verify_into's race kernel (one launch per call, Triton's
    interpreter) computes that rule draw for draw, each token written at its own row's base."""
    tokens, q, p = batch_case(1)
    n = 20_000
    check_rows_follow_the_law(tokens, q, p, race_outcome_counts(tokens, q, p, n, 3), n)
    check_bias_detected(tokens, q, p, race_outcome_counts(tokens, q, p, 3000, 4, residual=False), 3000)
    seen = check_race_kernel_equals_its_reference(tokens, q, p, 40, 3)
    assert {b for b, _, _ in seen} == {0, 1} and len({(b, n) for b, n, _ in seen}) >= 3
    check_race_kernel_equals_its_reference(tokens, q, p, 10, 4, residual=False)


def test_batched_verify_into_draws_u_then_the_race_per_row():
    """The draws of a batched verify_into: u (B, k), then the race's (B, V) exponentials, from the
    generator in that order (the kernel path equals the torch rule on those draws); at B = 1 the
    one-sequence draws of today (u (k,) then (V,))."""
    from triforce.kernels.verify import race_verify_reference
    from triforce.sampling import verify_into

    ctx = _race_kernels()
    g = torch.Generator().manual_seed(21)
    B, k, V = 3, 4, 5000
    q = torch.softmax(torch.randn(B, k, V, generator=g) * 3, -1)
    p = torch.softmax(torch.randn(B, k + 1, V, generator=g) * 3, -1)
    p[1, :k] = q[1]  # every proposal of row 1 accepted
    tokens = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, k)
    base = torch.tensor([0, 3, 1])
    for seed in range(4):
        buffer = torch.full((B, 12), -1, dtype=torch.int64)
        out = verify_into(tokens, q, p, torch.Generator().manual_seed(seed), buffer, base, ctx=ctx)
        draws = torch.Generator().manual_seed(seed)
        u = torch.rand((B, k), generator=draws)
        race = torch.empty(B, V).exponential_(generator=draws)
        ref = race_verify_reference(tokens, q, p, u, race)
        assert out.tolist() == ref.tolist() and ref[1, 0] == k
        for b in range(B):
            assert buffer[b, int(base[b]) + int(ref[b, 0])] == ref[b, 1]
        # the reference path (no kernels) writes the same places
        buffer2 = torch.full((B, 12), -1, dtype=torch.int64)
        verdict = verify_into(tokens, q, p, torch.Generator().manual_seed(seed), buffer2, base)
        assert verdict.shape == (B, 2 + k) and verdict[:, 2:].tolist() == tokens.tolist()
        for b in range(B):
            assert buffer2[b, int(base[b]) + int(verdict[b, 0])] == verdict[b, 1]
        # one sequence: today's draws, u (k,) then (V,)
        one = verify_into(tokens[0], q[0], p[0], torch.Generator().manual_seed(seed), buffer[0].clone(), 2, ctx=ctx)
        draws = torch.Generator().manual_seed(seed)
        u1 = torch.rand(k, generator=draws)
        assert one.tolist() == race_verify_reference(tokens[0], q[0], p[0], u1,
                                                     torch.empty(V).exponential_(generator=draws)).tolist()


def test_batched_verify_tensor_of_one_row_draws_as_the_one_sequence_call():
    from triforce.sampling import verify_tensor

    g = torch.Generator().manual_seed(22)
    q = torch.softmax(torch.randn(3, 7, generator=g), -1)
    p = torch.softmax(torch.randn(4, 7, generator=g), -1)
    tokens = torch.tensor([1, 5, 2])
    for seed in range(20):
        one = verify_tensor(tokens, q, p, torch.Generator().manual_seed(seed))
        batch = verify_tensor(tokens[None], q[None], p[None], torch.Generator().manual_seed(seed))
        assert batch.shape == (1, 2) and batch[0].tolist() == one.tolist()


@pytest.mark.parametrize("kernel", [True, False])
def test_sample_into_a_batch_writes_each_row(kernel):
    """sample_into over (B, V): row b's token at out_tokens[b, index] or index_from[b] + index; the
    kernel path is the race on the (B, V) draws, the reference torch.multinomial's rows."""
    from triforce.kernels.verify import race_sample_reference
    from triforce.sampling import sample, sample_into

    ctx = _race_kernels() if kernel else None
    probs = torch.softmax(torch.randn(3, 6000, generator=torch.Generator().manual_seed(23)) * 3, -1)
    for index_from in (None, torch.tensor([2, 0, 5])):
        buffer = torch.full((3, 10), -1, dtype=torch.int64)
        sample_into(probs, torch.Generator().manual_seed(1), buffer, 3, index_from=index_from, ctx=ctx)
        draws = torch.Generator().manual_seed(1)
        expected = (race_sample_reference(probs, torch.empty(3, 6000).exponential_(generator=draws)) if kernel
                    else sample(probs, draws))
        for b in range(3):
            at = 3 + (0 if index_from is None else int(index_from[b]))
            assert buffer[b, at] == expected[b] and (buffer[b] >= 0).sum() == 1
