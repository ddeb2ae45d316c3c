"""Label-driven losses on one-hot or soft label maps ``(B, K, *S)``: soft Dice, blurred-boundary, label SSD.

``pred`` is typically the moving label map warped as one-hot with linear interpolation
(:func:`common.blocks.warp_labels` with ``return_one_hot=True``), ``target`` the fixed one-hot map
(:func:`common.blocks.one_hot`). Both must be floating point with the same shape; every loss returns a value
to **minimise** and states its range and optimum. ``mask`` ``(B, 1, *S)`` or ``(1, 1, *S)`` holds voxel
weights; reduction goes through :func:`common.losses._reduction.reduce`.
"""

from __future__ import annotations

import torch
from monai.networks.layers import separable_filtering
from torch import nn

from common.losses._checks import check_pair
from common.losses._reduction import check_reduction, reduce
from common.losses.probabilistic import gaussian_kernel_1d

__all__ = ["SoftDiceLoss", "BlurredBoundaryLoss", "LabelSSDLoss", "soft_dice"]


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


def _check_labels(
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
        _check_labels(pred, target, mask, type(self).__name__, self.include_background)
        dice = soft_dice(pred, target, mask, self.squared, self.smooth)
        if not self.include_background:
            dice = dice[:, 1:]
        return reduce(1.0 - dice, self.reduction)


class BlurredBoundaryLoss(nn.Module):
    """Blurred-boundary label loss of Han et al. 2021 (eq. 3): ``L1(G*p, G*t) + 1 - Dice(G*p, G*t)``.

    Both one-hot maps are smoothed with a separable, sampled Gaussian ``G`` (``kernel_size`` taps, standard
    deviation ``sigma`` voxels, normalised to sum 1, replicate padding so blurred one-hot maps still sum to
    1 at the border), which turns each label boundary into a soft band and gives gradients a few voxels
    away from it. ``L1`` is the mask-weighted mean of ``|G*p - G*t|`` over voxels and classes; Dice is the
    squared-denominator soft Dice of :func:`soft_dice`, averaged over classes, so the loss is exactly 0 for
    identical label maps (the plain Dice of blurred, non-binary maps would not reach 1).

    Sign, range, optimum: ``[0, 2]``; ``0`` iff the blurred maps are identical.

    Args:
        kernel_size: odd number of Gaussian taps per axis (7 in the paper).
        sigma: Gaussian standard deviation in voxels (1 in the paper).
        include_background: keep channel 0 in both terms.
        smooth: Dice smoothing term.
        reduction: over the per-sample losses ``(B,)`` (``"none"`` returns them).

    References:
        Han L., Dou H., Huang Y., Yap P.-T. Deformable registration of brain MR images via a hybrid loss.
        arXiv:2110.15027, 2021, eq. (3).
    """

    def __init__(
        self,
        kernel_size: int = 7,
        sigma: float = 1.0,
        include_background: bool = True,
        smooth: float = 1e-5,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.reduction = check_reduction(reduction, name)
        if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0 or sigma <= 0:
            raise ValueError(f"{name}: need an odd `kernel_size` >= 1 and `sigma` > 0, got {kernel_size} and {sigma}.")
        self.include_background = bool(include_background)
        self.smooth = float(smooth)
        self.register_buffer("kernel", gaussian_kernel_1d(float(sigma), radius=int(kernel_size) // 2), persistent=False)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur of ``(B, K, *S)`` with replicate padding."""
        return separable_filtering(x, [self.kernel.to(x)] * (x.ndim - 2), mode="replicate")

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_labels(pred, target, mask, type(self).__name__, self.include_background)
        if not self.include_background:
            pred, target = pred[:, 1:], target[:, 1:]
        bp, bt = self.blur(pred), self.blur(target)
        dice = soft_dice(bp, bt, mask, squared=True, smooth=self.smooth)  # (B, K)
        l1_map = (bp - bt).abs()
        per_sample = []
        for i in range(pred.shape[0]):
            m = None if mask is None else mask[i : i + 1] if mask.shape[0] > 1 else mask
            per_sample.append(reduce(l1_map[i : i + 1], "mean", m) + reduce(1.0 - dice[i], "mean"))
        return reduce(torch.stack(per_sample), self.reduction)


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
        _check_labels(pred, target, mask, type(self).__name__, self.include_background)
        if not self.include_background:
            pred, target = pred[:, 1:], target[:, 1:]
        values = 0.5 * ((pred - target) ** 2).sum(dim=1, keepdim=True)
        return reduce(values, self.reduction, mask)
