"""kernels.activation: the SiLU-and-multiply kernel against its torch reference."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import DEVICE, kernels_ctx, requires_triton
from triforce.kernels.activation import silu_mul, silu_mul_reference

pytestmark = requires_triton


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_silu_mul_matches_reference(dtype):
    gate_up = torch.randn(2, 3, 2 * 1500, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(silu_mul(gate_up, ctx=kernels_ctx()), silu_mul_reference(gate_up), atol=tol, rtol=tol)
