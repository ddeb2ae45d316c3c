"""FixedImageLNCC: LocalNCCLoss's value and gradient with the fixed image's statistics computed once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.losses import LocalNCCLoss
from common.losses.fixed_lncc import FixedImageLNCC, box_sum


@pytest.mark.parametrize("shape", [(1, 1, 9, 11, 7), (2, 3, 12, 10)])
@pytest.mark.parametrize("width", [1, 3, 5])
def test_box_sum_equals_a_zero_padded_convolution_with_ones(shape, width):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    dims = x.ndim - 2
    conv = F.conv3d if dims == 3 else F.conv2d
    kernel = torch.ones(shape[1], 1, *([width] * dims), dtype=x.dtype)
    expected = conv(x, kernel, padding=width // 2, groups=shape[1])
    out = box_sum(x, width)
    assert torch.allclose(out, expected, atol=1e-12)
    assert out.data_ptr() != x.data_ptr()  # a new tensor; the input is untouched
    assert torch.equal(x, torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("shape", [(1, 1, 14, 12, 10), (2, 2, 16, 13)])
@pytest.mark.parametrize("kernel", [3, 5])
def test_value_and_gradient_equal_local_ncc_loss(shape, kernel):
    torch.manual_seed(1)
    fixed = torch.rand(*shape, dtype=torch.float64)
    pred = (0.6 * fixed + 0.4 * torch.rand(*shape, dtype=torch.float64)).requires_grad_(True)
    reference = LocalNCCLoss(kernel_size=kernel)(pred, fixed)
    (g_ref,) = torch.autograd.grad(reference, pred)
    value = FixedImageLNCC(fixed, kernel)(pred)
    (g,) = torch.autograd.grad(value, pred)
    assert abs(float(value.detach()) - float(reference.detach())) < 1e-12
    assert torch.allclose(g, g_ref, rtol=1e-9, atol=1e-15)
    assert float(g.abs().max()) > 0


def test_gradcheck_including_flat_windows():
    torch.manual_seed(2)
    fixed = torch.rand(1, 1, 8, 7, 6, dtype=torch.float64)
    pred = torch.rand(1, 1, 8, 7, 6, dtype=torch.float64)
    pred[..., :3, :, :] = 0.5  # constant windows: the clamped-variance branch
    loss = FixedImageLNCC(fixed, 3)
    assert torch.autograd.gradcheck(loss, (pred.requires_grad_(True),))


def test_optimum_and_range():
    fixed = torch.rand(1, 1, 10, 10, 10)
    loss = FixedImageLNCC(fixed, 5)
    assert float(loss(2.0 * fixed + 0.3)) < 1e-5  # affine intensity change: perfect match
    assert 0.5 < float(loss(torch.rand(1, 1, 10, 10, 10))) <= 1.0


def test_float32_matches_local_ncc_loss_to_rounding():
    torch.manual_seed(3)
    fixed = torch.rand(1, 1, 24, 20, 22)
    pred = (fixed + 0.2 * torch.rand(1, 1, 24, 20, 22)).requires_grad_(True)
    reference = LocalNCCLoss(kernel_size=5)(pred, fixed)
    (g_ref,) = torch.autograd.grad(reference, pred)
    value = FixedImageLNCC(fixed, 5)(pred)
    (g,) = torch.autograd.grad(value, pred)
    assert abs(float(value.detach()) - float(reference.detach())) < 1e-6
    assert float((g - g_ref).abs().max()) < 1e-4 * float(g_ref.abs().max())


@pytest.mark.parametrize(
    "args, message",
    [((torch.rand(1, 1, 5, 5, 5), 4), "kernel_size"), ((torch.rand(5, 5), 3), "target must be")],
)
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        FixedImageLNCC(*args)


def test_shape_mismatch_names_both_shapes():
    loss = FixedImageLNCC(torch.rand(1, 1, 6, 6, 6), 3)
    with pytest.raises(ValueError, match=r"\(1, 1, 5, 6, 6\).*\(1, 1, 6, 6, 6\)"):
        loss(torch.rand(1, 1, 5, 6, 6))
