"""kernels.top_p: the sort-free nucleus (temperature, softmax, top-p) kernels against the torch
definition (sampling.nucleus): the one-program rows and the split path, its fallback, bf16 logits."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import DEVICE, kernels_ctx, requires_triton

pytestmark = requires_triton


@pytest.mark.parametrize("top_p", [0.9, 0.5, 1.0])
@pytest.mark.parametrize("vocab", [64, 1000])
def test_top_p_kernel_matches_the_torch_definition(vocab, top_p):
    from triforce.kernels.top_p import top_p_probabilities
    from triforce.sampling import nucleus

    g = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(5, vocab, generator=g) * 3).to(DEVICE)
    logits[4, : vocab // 2] = logits[4, 0]  # a row of ties: tied tokens are kept or dropped together
    out = top_p_probabilities(logits, 0.6, top_p, ctx=kernels_ctx())
    ref = torch.softmax(logits.float() / 0.6, -1)
    ref = nucleus(ref, top_p) if top_p < 1 else ref
    assert torch.equal(out > 0, ref > 0)  # the same nucleus
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert (out[4, : vocab // 2] > 0).all() or (out[4, : vocab // 2] == 0).all()


def test_nucleus_keeps_ties_together_and_the_top_token():
    from triforce.sampling import nucleus

    probs = torch.tensor([[0.4, 0.2, 0.2, 0.1, 0.1]])
    # mass strictly above 0.2 is 0.4 < 0.5: both 0.2s stay; above 0.1 is 0.8 >= 0.5: both go
    assert nucleus(probs, 0.5).nonzero()[:, 1].tolist() == [0, 1, 2]
    assert nucleus(probs, 0.3).nonzero()[:, 1].tolist() == [0]
    assert nucleus(torch.tensor([[0.9, 0.1]]), 0.05).nonzero()[:, 1].tolist() == [0]


def _nucleus_reference(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    from triforce.sampling import nucleus

    probs = torch.softmax(logits.float() / temperature, -1)
    return nucleus(probs, top_p) if top_p < 1 else probs


def _split_rows(vocab: int) -> torch.Tensor:
    """Rows that exercise the split top-p path: peaked, flat (the nucleus is most of the vocabulary),
    all tied, a tie run at the boundary, -inf logits (a whole chunk of them)."""
    g = torch.Generator().manual_seed(vocab)
    rows = [torch.randn(vocab, generator=g) * 3, torch.randn(vocab, generator=g) * 0.55,
            torch.zeros(vocab), torch.randn(vocab, generator=g) * 3, torch.randn(vocab, generator=g) * 2]
    rows[3][: vocab // 3] = rows[3][7]  # a third of the row tied at one value
    rows[4][: min(vocab // 2, 4096)] = float("-inf")  # a chunk that is all -inf
    return torch.stack(rows)


@pytest.mark.parametrize("top_p", [0.9, 0.5, 0.02, 1.0])
@pytest.mark.parametrize("vocab", [5000, 40000])
def test_top_p_split_path_matches_the_torch_definition(vocab, top_p):
    from triforce.kernels.triton_top_p import top_p_split

    logits = _split_rows(vocab).to(DEVICE)
    diagnostics = {}
    out = top_p_split(logits, 0.6, top_p, diagnostics=diagnostics)
    ref = _nucleus_reference(logits, 0.6, top_p)
    assert torch.equal(out > 0, ref > 0)  # the same nucleus, ties kept together
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    if top_p < 1:
        # the bracket (not the whole-row fallback) found the threshold: that path is what is tested
        assert not diagnostics["full_row"].any()
        assert (diagnostics["candidates"][[0, 1, 3, 4]] < vocab // 10).all()  # row 2: all tied, all candidates


def test_top_p_split_fallback_and_bf16_logits():
    """The whole-row bisection (taken when the bracket misses) gives the same result; bf16 logits
    as the model emits them; several leading dimensions."""
    from triforce.kernels.triton_top_p import top_p_split

    logits = _split_rows(9000).to(DEVICE, torch.bfloat16)
    ref = _nucleus_reference(logits, 0.7, 0.9)
    diagnostics = {}
    full = top_p_split(logits, 0.7, 0.9, force_full=True, diagnostics=diagnostics)
    assert diagnostics["full_row"].all()
    assert torch.equal(full > 0, ref > 0)
    torch.testing.assert_close(full, ref, atol=1e-6, rtol=1e-5)
    shaped = top_p_split(logits.reshape(5, 1, 9000), 0.7, 0.9)
    assert shaped.shape == (5, 1, 9000) and torch.equal(shaped.reshape(5, 9000) > 0, full > 0)
    torch.testing.assert_close(shaped.reshape(5, 9000), full, atol=1e-7, rtol=1e-6)


def test_top_p_split_llama3_vocabulary():
    from triforce.kernels.top_p import top_p_probabilities

    g = torch.Generator().manual_seed(128256)
    logits = torch.stack([torch.randn(128256, generator=g) * s for s in (3.0, 1.3)]).to(DEVICE, torch.bfloat16)
    out = top_p_probabilities(logits, 0.6, 0.9, ctx=kernels_ctx())
    ref = _nucleus_reference(logits, 0.6, 0.9)
    assert torch.equal(out > 0, ref > 0)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
