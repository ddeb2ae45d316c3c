"""The shared reduction helper and the public API of common.losses."""

from __future__ import annotations

import pytest
import torch

import common.losses as losses
from common.losses import reduce

VALUES = torch.arange(8.0).view(2, 1, 2, 2)  # batch 0: 0 1 2 3, batch 1: 4 5 6 7
MASK = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)  # broadcast over the batch


@pytest.mark.parametrize(
    "reduction,mask,expected",
    [
        ("mean", None, 3.5),
        ("sum", None, 28.0),
        ("mean", MASK, 2.0),  # (0 + 4) / 2: the batch-1 mask counts once per sample
        ("sum", MASK, 4.0),
        ("mean", torch.zeros(1, 1, 2, 2), 0.0),  # empty mask: 0, not NaN
        ("mean", 0.5 * MASK + 0.25, (0.75 * 0 + 0.25 * 6 + 0.75 * 4 + 0.25 * 18) / (2 * 1.5)),
    ],
)
def test_reduce_values(reduction, mask, expected):
    assert float(reduce(VALUES, reduction, mask)) == pytest.approx(expected)


def test_reduce_none_applies_the_mask():
    out = reduce(VALUES, "none", MASK)
    assert out.shape == VALUES.shape
    assert out.flatten().tolist() == [0, 0, 0, 0, 4, 0, 0, 0]
    assert reduce(VALUES, "none") is VALUES


@pytest.mark.parametrize(
    "reduction,mask,match",
    [
        ("avg", None, r"^reduce: `reduction` must be one of \('none', 'mean', 'sum'\), got 'avg'"),
        ("mean", torch.ones(1, 1, 3, 3), r"^reduce: `mask` of shape \(1, 1, 3, 3\) does not broadcast"),
        ("mean", torch.ones(3, 1, 2, 2), r"^reduce: `mask` of shape \(3, 1, 2, 2\)"),
    ],
)
def test_reduce_errors(reduction, mask, match):
    with pytest.raises(ValueError, match=match):
        reduce(VALUES, reduction, mask)


def test_reduce_gradient_is_the_weighted_mean_weights():
    v = VALUES.clone().requires_grad_()
    reduce(v, "mean", MASK).backward()
    assert v.grad.flatten().tolist() == [0.5, 0, 0, 0, 0.5, 0, 0, 0]


def test_public_api():
    expected = {
        "SSDLoss",
        "GlobalNCCLoss",
        "LocalNCCLoss",
        "MutualInformationLoss",
        "NGFLoss",
        "SoftDiceLoss",
        "LabelSSDLoss",
        "GradientRegulariser",
        "CurvatureRegulariser",
        "BendingEnergyRegulariser",
        "reduce",
    }
    assert expected <= set(losses.__all__)
    for name in losses.__all__:
        assert hasattr(losses, name)
    from common.methods.hybrid_loss import BlurredBoundaryLoss  # a method's own loss keeps the same contract

    for module in [getattr(losses, name)() for name in sorted(expected - {"reduce"})] + [BlurredBoundaryLoss()]:
        assert isinstance(module, torch.nn.Module)
        assert module.reduction == "mean"
        assert not list(module.parameters()) and not module.state_dict()  # nothing lands in checkpoints
