"""Label-driven losses on one-hot or soft label maps ``(B, K, *S)``: soft Dice, blurred-boundary, label SSD.

``pred`` is typically the moving label map warped as one-hot with linear interpolation
(:func:`common.blocks.warp_labels` with ``return_one_hot=True``), ``target`` the fixed one-hot map
(:func:`common.blocks.one_hot`). Both must be floating point with the same shape; every loss returns a value
to **minimise** and states its range and optimum. ``mask`` ``(B, 1, *S)`` or ``(1, 1, *S)`` holds voxel
weights; reduction goes through :func:`common.losses._reduction.reduce`.
"""

from __future__ import annotations

import torch
from torch import nn

from common.losses._checks import check_pair
from common.losses._reduction import check_reduction, reduce

__all__ = ["SoftDiceLoss", "LabelSSDLoss", "soft_dice"]


def soft_dice(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    squared: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Per-sample, per-class soft Dice ``(B, K)`` of maps ``(B, K, *S)`` (no input checks; see the losses).

    ``Dice = (2 sum w p t + smooth) / (sum w p + sum w t + smooth)``, or with ``squared=True`` the V-Net form
    with ``sum w p^2 + sum w t^2`` in the denominator, which equals 1 for *any* identical soft maps (the plain
    form only does so for binary maps). A class absent from both maps gets Dice 1.
    """
    dims = tuple(range(2, pred.ndim))
    w = 1.0 if mask is None else mask.to(pred.dtype)
    inter = (w * pred * target).sum(dim=dims)
    if squared:
        denom = (w * pred * pred).sum(dim=dims) + (w * target * target).sum(dim=dims)
    else:
        denom = (w * pred).sum(dim=dims) + (w * target).sum(dim=dims)
    return (2.0 * inter + smooth) / (denom + smooth)


def check_labels(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, caller: str, include_background: bool
) -> None:
    check_pair(pred, target, caller, mask)
    if not include_background and pred.shape[1] < 2:
        raise ValueError(
            f"{caller}: include_background=False needs K >= 2 channels (background + labels), got "
            f"`pred` shape {tuple(pred.shape)}."
        )


class SoftDiceLoss(nn.Module):
    """``1 - mean soft Dice`` over classes for one-hot/soft label maps ``(B, K, *S)``.

    Numerically the same as MONAI ``DiceLoss(include_background=..., smooth_nr=smooth, smooth_dr=smooth)`` on
    probabilities when no mask is given (a test pins this); it is re-implemented in :func:`soft_dice` because
    MONAI's loss has no voxel-weight mask and :class:`BlurredBoundaryLoss` needs the squared-denominator form
    on the same code path.

    Sign, range, optimum: ``[0, 1]`` for maps in ``[0, 1]``; ``0`` when the (binary) maps are identical,
    ``1`` when they do not overlap.

    Args:
        include_background: keep channel 0 in the mean (set False to score foreground labels only).
        squared: use ``sum p^2 + sum t^2`` in the denominator (V-Net); the default is ``sum p + sum t``.
        smooth: added to numerator and denominator (a class absent from both maps scores Dice 1).
        reduction: over the per-sample, per-class losses ``(B, K)`` (``"none"`` returns them).
    """

    def __init__(
        self, include_background: bool = True, squared: bool = False, smooth: float = 1e-5, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, type(self).__name__)
        self.include_background = bool(include_background)
        self.squared = bool(squared)
        self.smooth = float(smooth)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(pred, target, mask, type(self).__name__, self.include_background)
        dice = soft_dice(pred, target, mask, self.squared, self.smooth)
        if not self.include_background:
            dice = dice[:, 1:]
        return reduce(1.0 - dice, self.reduction)


class LabelSSDLoss(nn.Module):
    """Label SSD term of Hering et al. 2019: ``1/2 * mean_x sum_k (p_k(x) - t_k(x))^2`` over one-hot channels.

    Discretisation and scale: the integral ``1/2 int ||b_M(y(x)) - b_F(x)||^2 dx`` is replaced by the
    (mask-weighted) mean over voxels, i.e. divided by the number of voxels rather than multiplied by the voxel
    volume, so the value does not depend on image size or spacing. For hard one-hot maps the per-voxel term
    is 1 where the labels differ and 0 where they agree, so the loss is the fraction of mislabelled voxels.

    Sign, range, optimum: ``[0, 1]`` for maps in ``[0, 1]`` summing to 1 per voxel; ``0`` iff the maps agree.

    Args:
        include_background: keep channel 0 in the sum over channels.
        reduction: ``"mean"``/``"sum"`` over voxels and batch, or ``"none"`` for the ``(B, 1, *S)`` map.

    References:
        Hering A., Kuckertz S., Heldmann S., Heinrich M. P. Enhancing label-driven deep deformable image
        registration with local distance metrics for state-of-the-art cardiac motion tracking.
        Bildverarbeitung fuer die Medizin (BVM) 2019.
    """

    def __init__(self, include_background: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, type(self).__name__)
        self.include_background = bool(include_background)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(pred, target, mask, type(self).__name__, self.include_background)
        if not self.include_background:
            pred, target = pred[:, 1:], target[:, 1:]
        values = 0.5 * ((pred - target) ** 2).sum(dim=1, keepdim=True)
        return reduce(values, self.reduction, mask)
