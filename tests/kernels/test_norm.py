"""kernels.norm: the fused residual add + RMSNorm kernel against its torch reference."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import DEVICE, kernels_ctx, requires_triton
from triforce.kernels.norm import rms_norm, rms_norm_reference

pytestmark = requires_triton


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rms_norm_matches_reference(residual, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 96, generator=g).to(DEVICE, dtype)
    r = torch.randn(3, 5, 96, generator=g).to(DEVICE, dtype) if residual else None
    w = (1 + 0.1 * torch.randn(96, generator=g)).to(DEVICE, dtype)
    y, h = rms_norm(x, w, 1e-6, r, ctx=kernels_ctx())
    y_ref, h_ref = rms_norm_reference(x, w, 1e-6, r)
    torch.testing.assert_close(h, h_ref, atol=0, rtol=0)  # the residual add rounds exactly as torch
    tol = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
