"""Han et al. 2021's label term: the blurred-boundary loss (its image terms and regulariser are generic losses)."""

from __future__ import annotations

import torch
from monai.networks.layers import separable_filtering
from torch import nn

from common.losses._reduction import check_reduction, reduce
from common.losses.labels import check_labels, soft_dice
from common.losses.probabilistic import gaussian_kernel_1d

__all__ = ["BlurredBoundaryLoss"]


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
        check_labels(pred, target, mask, type(self).__name__, self.include_background)
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
