"""Label losses: gradients, ranges, exact zeros, growth with label shift, agreement with MONAI, errors."""

from __future__ import annotations

import pytest
import torch
from loss_helpers import ball_labels, shift_x
from monai.losses import DiceLoss
from torch.autograd import gradcheck

from common.losses import LabelSSDLoss, SoftDiceLoss
from common.methods.hybrid_loss import BlurredBoundaryLoss

SHAPES = {2: (20, 20), 3: (12, 12, 12)}
LOSSES = {
    "dice": lambda: SoftDiceLoss(),
    "dice_fg": lambda: SoftDiceLoss(include_background=False),
    "blurred": lambda: BlurredBoundaryLoss(),
    "label_ssd": lambda: LabelSSDLoss(),
}


def soft_maps(batch: int, k: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.softmax(3 * torch.randn(batch, k, *shape, dtype=torch.float64), dim=1)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck(name, dims, with_mask):
    shape = (5,) * dims
    pred = soft_maps(1, 3, shape).requires_grad_()
    target = soft_maps(1, 3, shape).requires_grad_()
    mask = torch.rand(1, 1, *shape, dtype=torch.float64) if with_mask else None
    loss = LOSSES[name]()
    assert gradcheck(lambda p, t: loss(p, t, mask), (pred, target), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(LOSSES))
def test_zero_for_identical_label_maps_and_grows_with_shift(name, dims):
    labels = ball_labels(SHAPES[dims])
    loss = LOSSES[name]()
    values = [float(loss(shift_x(labels, s), labels)) for s in (0, 1, 2, 3)]
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert all(b > a + 1e-3 for a, b in zip(values, values[1:])), values


def test_blurred_boundary_is_exactly_zero_for_identical_maps_even_when_soft():
    soft = soft_maps(2, 4, (9, 9, 9))
    assert float(BlurredBoundaryLoss()(soft, soft.clone())) == pytest.approx(0.0, abs=1e-12)
    # the plain soft Dice of non-binary maps does not reach 0, the squared form does
    assert float(SoftDiceLoss()(soft, soft)) > 0.1
    assert float(SoftDiceLoss(squared=True)(soft, soft)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("include_background", [True, False])
def test_dice_in_unit_range_and_matches_monai(include_background):
    pred, target = soft_maps(3, 4, (7, 8, 6)), soft_maps(3, 4, (7, 8, 6))
    ours = SoftDiceLoss(include_background=include_background, reduction="none")(pred, target)
    assert ours.shape == (3, 4 if include_background else 3)
    assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0
    monai = DiceLoss(include_background=include_background, reduction="none")(pred, target)
    torch.testing.assert_close(ours, monai.view(ours.shape))


def test_dice_extremes():
    labels = ball_labels((10, 10))
    assert float(SoftDiceLoss()(labels, labels)) == pytest.approx(0.0, abs=1e-9)
    disjoint = labels[:, [1, 2, 0]]  # every voxel gets a wrong class
    assert float(SoftDiceLoss()(disjoint, labels)) == pytest.approx(1.0, abs=1e-6)


def test_label_ssd_is_fraction_of_mislabelled_voxels():
    labels = ball_labels((16, 16, 16))
    other = labels.clone()
    other[:, :, :3] = labels[:, [1, 2, 0], :3]  # relabel the first 3 slices
    expected = float((labels.argmax(1) != other.argmax(1)).double().mean())
    assert float(LabelSSDLoss()(other, labels)) == pytest.approx(expected)
    assert 0.0 < expected < 1.0


def test_mask_restricts_label_losses():
    labels = ball_labels((12, 12))
    other = labels.clone()
    other[:, :, 8:] = labels[:, [1, 2, 0], 8:]
    mask = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    mask[:, :, :4] = 1  # blur reaches 3 voxels: rows 0..3 are untouched by the change in rows 8..11
    for loss in (SoftDiceLoss(), BlurredBoundaryLoss(), LabelSSDLoss()):
        assert float(loss(other, labels, mask)) == pytest.approx(0.0, abs=1e-6)
        assert float(loss(other, labels)) > 0.01


def test_blurred_boundary_per_sample_reduction():
    labels = ball_labels((12, 12)).repeat(3, 1, 1, 1)
    moved = torch.cat([labels[:1], shift_x(labels[1:2], 1.0), shift_x(labels[2:], 2.0)])
    values = BlurredBoundaryLoss(reduction="none")(moved, labels)
    assert values.shape == (3,)
    assert float(values[0]) == pytest.approx(0.0, abs=1e-12) and 0 < float(values[1]) < float(values[2])
    assert float(BlurredBoundaryLoss(reduction="sum")(moved, labels)) == pytest.approx(float(values.sum()))


ERRORS = [
    ("shape mismatch", (1, 3, 8, 8), (1, 3, 8, 9), r"shape mismatch.*\(1, 3, 8, 9\)"),
    ("channel mismatch", (1, 3, 8, 8), (1, 4, 8, 8), r"shape mismatch.*\(1, 3, 8, 8\).*\(1, 4, 8, 8\)"),
    ("1d", (1, 3, 8), (1, 3, 8), r"2 or 3 spatial dims"),
]


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("case,pred_shape,target_shape,match", ERRORS, ids=[e[0] for e in ERRORS])
def test_shape_errors(name, case, pred_shape, target_shape, match):
    loss = LOSSES[name]()
    with pytest.raises(ValueError, match=rf"^{type(loss).__name__}: .*{match}"):
        loss(torch.rand(pred_shape), torch.rand(target_shape))


@pytest.mark.parametrize("name", list(LOSSES))
def test_nan_and_mask_errors(name):
    loss = LOSSES[name]()
    cls = type(loss).__name__
    bad = torch.rand(1, 3, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"^{cls}: `pred` contains NaN or Inf values \(shape \(1, 3, 8, 8\)\)"):
        loss(bad, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=rf"^{cls}: `mask` must have shape \(1, 1, 8, 8\)"):
        loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.ones(1, 3, 8, 8))


def test_single_channel_without_background_and_integer_maps_are_refused():
    with pytest.raises(ValueError, match=r"^SoftDiceLoss: include_background=False needs K >= 2"):
        SoftDiceLoss(include_background=False)(torch.rand(1, 1, 6, 6), torch.rand(1, 1, 6, 6))
    with pytest.raises(TypeError, match=r"^LabelSSDLoss: `target` must be a floating-point tensor.*one_hot"):
        LabelSSDLoss()(torch.rand(1, 1, 6, 6), torch.ones(1, 1, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^BlurredBoundaryLoss: need an odd `kernel_size`"):
        BlurredBoundaryLoss(kernel_size=6)
