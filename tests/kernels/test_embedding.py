"""kernels.embedding: the embedding gathered straight from the token buffer, one sequence at a
device start and a batch at per-sequence starts."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import BATCHES, DEVICE, kernels_ctx, requires_triton, starts

pytestmark = requires_triton


def test_embedding_gathered_from_the_token_buffer():
    from triforce.inputs import TokenSlice
    from triforce.kernels.embedding import embed

    g = torch.Generator().manual_seed(5)
    weight = torch.randn(50, 80, generator=g).to(DEVICE)
    buffer = torch.randint(0, 50, (30,), generator=g).to(DEVICE)
    tokens = TokenSlice(buffer, torch.tensor(11, device=DEVICE), 3)
    out = embed(weight, tokens, ctx=kernels_ctx())
    assert out.shape == (1, 3, 80)
    torch.testing.assert_close(out, weight[buffer[11:14]][None], atol=0, rtol=0)


@pytest.mark.parametrize("batch", BATCHES)
def test_embedding_of_a_batch_reads_each_sequence_at_its_start(batch):
    from triforce.inputs import TokenSlice
    from triforce.kernels.embedding import embed, embed_reference

    g = torch.Generator().manual_seed(15)
    weight = torch.randn(50, 80, generator=g).to(DEVICE)
    buffer = torch.randint(0, 50, (batch, 30), generator=g).to(DEVICE)
    tokens = TokenSlice(buffer, starts(batch, 11, 0, 26), 4)
    assert tokens.shape == (batch, 4) and tokens.ids().shape == (batch, 4)
    out = embed(weight, tokens, ctx=kernels_ctx())
    expected = torch.stack([weight[buffer[b, s:s + 4]] for b, s in enumerate((11, 0, 26)[:batch])])
    assert out.shape == (batch, 4, 80)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    torch.testing.assert_close(embed_reference(weight, tokens), expected, atol=0, rtol=0)
