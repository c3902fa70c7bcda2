"""kernels.verify: the race verify and race sample kernels against their torch references, on the
same draws; where each writes its token into the token buffer; one sequence and a batch."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import BATCHES, DEVICE, kernels_ctx, requires_triton, starts

pytestmark = requires_triton


def _verify_case(k: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(k, vocab, generator=g) * 2, -1)
    p = torch.softmax(torch.randn(k + 1, vocab, generator=g) * 2, -1)
    tokens = torch.multinomial(q, 1, generator=g)[:, 0]
    u = torch.rand(k, generator=g)
    race = torch.empty(vocab).exponential_(generator=g)
    return tokens, q, p, u, race


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("k,vocab", [(1, 7), (3, 50), (6, 10000), (17, 9000)])
def test_race_verify_kernel_matches_reference(k, vocab, residual):
    """kernels.verify: the acceptance prefix, the residual and the race over several chunks of the
    vocabulary, against the same function in torch ops on the same draws; the emitted token is
    written into the token buffer at base + n."""
    from triforce.kernels.verify import race_verify, race_verify_reference

    for seed in range(24):
        tokens, q, p, u, race = _verify_case(k, vocab, seed % 6)
        race = torch.empty(vocab).exponential_(generator=torch.Generator().manual_seed(100 + seed))
        if seed % 6 == 1:
            u = torch.zeros(k)  # every proposal accepted: the bonus row
        if seed % 6 == 2:
            p[: k] = q  # p = q, u = 1: rejected with an empty residual, drawn from p_n itself
            u = torch.ones(k)
        if seed % 6 == 3:  # the first proposal impossible under p, its mass moved to token 0:
            p[0] = q[0]  # the residual is one-hot at token 0
            p[0, 0] += p[0, tokens[0]] if tokens[0] != 0 else 0.0
            p[0, tokens[0]] = 0.0
        buffer = torch.full((k + 10,), -1, dtype=torch.int64)
        buffer[3:3 + k] = tokens
        out = race_verify(buffer[3:3 + k], q, p, u, race, residual=residual, out_tokens=buffer, base=3,
                          ctx=kernels_ctx())
        ref = race_verify_reference(tokens, q, p, u, race, residual=residual)
        n, token = int(ref[0]), int(ref[1])
        assert out[:2].tolist() == [n, token] and out[2:2 + n].tolist() == tokens[:n].tolist()
        assert buffer[3 + n] == token
        if seed % 6 == 1:
            assert n == k
        if seed % 6 == 2:
            assert n == 0
        if seed % 6 == 3 and residual and tokens[0] != 0:
            assert (n, token) == (0, 0)


def test_race_sample_kernel_matches_reference_and_breaks_ties_low():
    from triforce.kernels.verify import race_sample, race_sample_reference

    g = torch.Generator().manual_seed(9)
    for vocab in (5, 5000, 12289):
        probs = torch.softmax(torch.randn(vocab, generator=g), -1)
        race = torch.empty(vocab).exponential_(generator=g)
        buffer = torch.zeros(5, dtype=torch.int64)
        token = race_sample(probs, race, out_tokens=buffer, index=4, ctx=kernels_ctx())
        assert int(token) == int(race_sample_reference(probs, race)) == int(buffer[4])
    probs = torch.zeros(9000)
    probs[[100, 4500, 8000]] = 1 / 3  # three equal ratios in three chunks: the smallest index wins
    assert int(race_sample(probs, torch.ones(9000), ctx=kernels_ctx())) == 100


@pytest.mark.parametrize("use_triton", [True, False])
def test_race_sample_writes_at_a_slot_read_from_the_device(use_triton):
    # a captured draft step writes its token at (the forward's start, a device value) + its length
    from triforce.kernels.verify import race_sample, race_sample_reference

    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(5000, generator=g), -1)
    race = torch.empty(5000).exponential_(generator=g)
    buffer = torch.full((12,), -1, dtype=torch.int64)
    race_sample(probs, race, out_tokens=buffer, index=2, index_from=torch.tensor([7]),
                ctx=kernels_ctx() if use_triton else None)
    expected = torch.full((12,), -1, dtype=torch.int64)
    expected[9] = race_sample_reference(probs, race)
    assert torch.equal(buffer, expected)


@pytest.mark.parametrize("use_triton", [True, False])
@pytest.mark.parametrize("batch", BATCHES)
def test_race_sample_of_a_batch_writes_each_row_at_its_slot(batch, use_triton):
    from triforce.kernels.verify import race_sample, race_sample_reference
    from triforce.kernels.workspace import Workspace

    g = torch.Generator().manual_seed(17)
    workspace = Workspace(DEVICE)
    ctx = kernels_ctx(workspace) if use_triton else None
    for vocab in (5, 9000):
        probs = torch.softmax(torch.randn(batch, vocab, generator=g) * 2, -1).to(DEVICE)
        race = torch.empty(batch, vocab).exponential_(generator=g).to(DEVICE)
        expected = race_sample_reference(probs, race)
        assert expected.shape == (batch,)
        for index_from in (None, starts(batch, 4, 0, 7)):
            buffer = torch.full((batch, 12), -1, dtype=torch.int64, device=DEVICE)
            tokens = race_sample(probs, race, out_tokens=buffer, index=2, index_from=index_from, ctx=ctx)
            assert tokens.tolist() == expected.tolist()
            want = torch.full((batch, 12), -1, dtype=torch.int64, device=DEVICE)
            for b in range(batch):
                want[b, 2 + (0 if index_from is None else int(index_from[b]))] = expected[b]
            assert torch.equal(buffer, want)
            assert not workspace.counters("race", 1).any()  # every row's counter is back at zero
    ties = torch.zeros(batch, 9000, device=DEVICE)
    for b in range(batch):  # three equal ratios in three chunks, a different set per row: the smallest wins
        ties[b, [100 + b, 4500, 8000 - b]] = 1 / 3
    assert race_sample(ties, torch.ones(batch, 9000, device=DEVICE), ctx=ctx).tolist() == [
        100 + b for b in range(batch)]


def _verify_batch_case(batch: int, k: int, vocab: int, seed: int):
    """Rows of different kinds in one batch: random; every proposal accepted (the bonus row); p = q
    with u = 1 (rejected, an empty residual: drawn from p_n itself)."""
    rows = [_verify_case(k, vocab, seed + b) for b in range(batch)]
    tokens, q, p, u, race = (torch.stack(x) for x in zip(*rows))
    if batch > 1:
        u[1] = 0.0
    if batch > 2:
        p[2, :k] = q[2]
        u[2] = 1.0
    return tokens, q, p, u, race


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("k,vocab", [(3, 50), (6, 10000)])
@pytest.mark.parametrize("batch", BATCHES)
def test_race_verify_of_a_batch_matches_reference(batch, k, vocab, residual):
    from triforce.kernels.verify import race_verify, race_verify_reference
    from triforce.kernels.workspace import Workspace

    workspace = Workspace(DEVICE)
    for seed in (0, 10):
        tokens, q, p, u, race = (t.to(DEVICE) for t in _verify_batch_case(batch, k, vocab, seed))
        ref = race_verify_reference(tokens, q, p, u, race, residual=residual)
        assert ref.shape == (batch, 2 + k)
        for b in range(batch):  # the batched reference is B one-sequence calls
            assert ref[b].tolist() == race_verify_reference(tokens[b], q[b], p[b], u[b], race[b],
                                                            residual=residual).tolist()
        if batch > 2:
            assert ref[1, 0] == k and ref[2, 0] == 0
        # the proposals as the engine keeps them: a view of each sequence's row of the token buffer
        buffer = torch.full((batch, k + 10), -1, dtype=torch.int64, device=DEVICE)
        buffer[:, 2:2 + k] = tokens
        out = race_verify(buffer[:, 2:2 + k], q, p, u, race, residual=residual, out_tokens=buffer, base=2,
                          ctx=kernels_ctx(workspace))
        assert out.tolist() == ref.tolist()
        for b in range(batch):
            n = int(ref[b, 0])
            assert buffer[b, 2 + n] == ref[b, 1] and buffer[b, 2:2 + n].tolist() == tokens[b, :n].tolist()
        # each sequence at its own base: a device tensor (+ a constant)
        base_from = starts(batch, 0, 5, 2)
        for use_triton in (True, False):
            buffer = torch.full((batch, k + 10), -1, dtype=torch.int64, device=DEVICE)
            out = race_verify(tokens, q, p, u, race, residual=residual, out_tokens=buffer, base=1, base_from=base_from,
                              ctx=kernels_ctx(workspace) if use_triton else None)
            assert out.tolist() == ref.tolist()
            want = torch.full((batch, k + 10), -1, dtype=torch.int64, device=DEVICE)
            for b in range(batch):
                want[b, 1 + int(base_from[b]) + int(ref[b, 0])] = ref[b, 1]
            assert torch.equal(buffer, want)
        assert not workspace.counters("race", 1).any()
