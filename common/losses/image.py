"""Image similarity losses for 2D and 3D registration: SSD, global NCC, local NCC, NGF (mutual information:
:mod:`common.losses.mutual_information`).

Every loss here returns a value to **minimise**; each docstring states sign, range and optimum. Inputs are
``pred`` (the warped moving image) and ``target`` (the fixed image), both ``(B, C, *S)`` with 2 or 3 spatial
dims and identical shapes; channels are compared channel by channel. An optional ``mask`` ``(B, 1, *S)`` or
``(1, 1, *S)`` holds non-negative voxel weights (fixed-image grid). Reduction (``none|mean|sum``) goes through
:func:`common.losses._reduction.reduce`. Invalid inputs raise ``ValueError``/``TypeError`` whose message
starts with the class name and shows the shapes received.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss as _MonaiLNCC
from torch import nn
from torch.utils.checkpoint import checkpoint

from common.losses._checks import check_pair, check_spacing
from common.losses._reduction import check_reduction, reduce

__all__ = ["SSDLoss", "GlobalNCCLoss", "LocalNCCLoss", "NGFLoss", "valid_lncc_map"]


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def _full(x: torch.Tensor) -> torch.Tensor:
    """Promote half precision to float32 (sums over windows/histograms lose too much in 16 bits)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class SSDLoss(nn.Module):
    """Mean squared intensity difference ``mean((pred - target)^2)`` (the "SSD" of most papers, averaged).

    Sign, range, optimum: ``>= 0``, unbounded above (intensity units squared), ``0`` iff the images are equal
    (on the mask's support).

    Args:
        reduction: ``"mean"`` (mask-weighted mean over voxels, channels and batch), ``"sum"`` or ``"none"``
            (per-voxel map ``(B, C, *S)``, multiplied by the mask).
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, type(self).__name__)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_pair(pred, target, type(self).__name__, mask)
        return reduce((pred - target) ** 2, self.reduction, mask)


class GlobalNCCLoss(nn.Module):
    """``1 - NCC`` with the global normalised cross-correlation over the whole image (Zhu et al. 2020, eq. 1).

    ``NCC = sum (p - mean p)(t - mean t) / sqrt(sum (p - mean p)^2 * sum (t - mean t)^2)`` per sample and
    channel, computed in two passes (centred, so no catastrophic cancellation); with a ``mask`` the means and
    sums are mask-weighted. Each variance is clamped at 0 *before* ``eps`` is added, so a constant image gives
    NCC = 0 instead of NaN/Inf.

    Sign, range, optimum: ``1 - NCC`` in ``[0, 2]``; ``0`` when ``pred`` is a positive affine function of
    ``target`` (``a * target + b``, ``a > 0``), ``1`` for uncorrelated images, ``2`` for inverted contrast.

    Args:
        eps: added to each (clamped) variance, in intensity units squared.
        reduction: over the per-sample, per-channel values ``(B, C)``.

    References:
        Zhu Z., et al. Joint affine and deformable three-dimensional networks for brain MRI
        registration. Medical Physics 48(3), 2021 (arXiv 2020), eq. (1).
    """

    def __init__(self, eps: float = 1e-8, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, type(self).__name__)
        if eps <= 0:
            raise ValueError(f"{type(self).__name__}: `eps` must be > 0, got {eps}.")
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_pair(pred, target, type(self).__name__, mask)
        dims = _spatial(pred)
        w = torch.ones_like(pred[:, :1]) if mask is None else mask.to(pred.dtype).expand_as(pred[:, :1])
        total = w.sum(dim=dims).clamp_min(torch.finfo(pred.dtype).tiny)  # (B, 1)

        def mean(x: torch.Tensor) -> torch.Tensor:
            return (w * x).sum(dim=dims) / total

        dp = pred - mean(pred).view(*pred.shape[:2], *([1] * len(dims)))
        dt = target - mean(target).view(*target.shape[:2], *([1] * len(dims)))
        cov = mean(dp * dt)
        var_p = mean(dp * dp).clamp_min(0.0) + self.eps
        var_t = mean(dt * dt).clamp_min(0.0) + self.eps
        ncc = cov / torch.sqrt(var_p * var_t)
        return reduce(1.0 - ncc, self.reduction)


class LocalNCCLoss(nn.Module):
    """``1 - LNCC^2``: one minus the *squared* local normalised cross-correlation (VoxelMorph's form).

    The local NCC of Zhu et al. 2020 (eq. 2) is computed in a ``kernel_size``-wide window around every voxel,
    squared as VoxelMorph and MONAI do (so inverted local contrast also counts as a match), and averaged.
    The per-voxel map comes from MONAI's :class:`~monai.losses.LocalNormalizedCrossCorrelationLoss`
    (``reduction="none"``), which already clamps the window variances at ``smooth_dr`` before dividing (the
    NaN/Inf fix of MONAI issue 1868) and returns ``-LNCC^2`` (range ``[-1, 0]``). This wrapper adds:

    * ``1 +`` so that the range is ``[0, 1]`` (same gradient as MONAI/VoxelMorph, values offset by 1);
    * each image is first centred by its global mean (LNCC is invariant to intensity offsets): the window
      variances ``sum(x^2) - sum(x)^2 / n`` cancel catastrophically in float32 when the intensity level is
      large compared with its local variation. Measured with MONAI 1.6.1 on a flat region of level 0.7 with
      noise 1e-4 (9^3 window), a third of the voxels get ``-LNCC^2 < -1``, down to -149 (level 10: -5e6);
    * clamping ``LNCC^2`` to ``[0, 1]``, its mathematical range (Cauchy-Schwarz), for the rounding noise
      that remains;
    * one module for 2D and 3D, mask-weighted reduction, input validation.

    Windows at the image border are zero-padded by MONAI *after* centring, i.e. padded with each image's
    mean intensity (MONAI and VoxelMorph pad the raw image with 0); away from the border (``kernel_size // 2``
    voxels) the map equals MONAI's up to rounding. The mask only weights the per-voxel map; windows still
    see voxels outside the mask.

    Memory: MONAI's filtering keeps about 45 image-sized tensors for the backward pass (measured: +1.3 GB
    for ``1x1x160x192x224`` float32 on CPU). Under autograd this wrapper therefore computes the map in
    slabs of about ``chunk_size`` voxels along the first spatial axis, each with ``kernel_size // 2`` rows of
    halo and checkpointed (recomputed in the backward pass), which gives the same values and gradients at
    about the same speed; measured peak then +0.27 GB live memory (+0.47 to +0.53 GB peak RSS).

    Sign, range, optimum: ``[0, 1]``, ``0`` when every window of ``pred`` is a non-constant affine function of
    the same window of ``target``.

    Args:
        kernel_size: odd window width in voxels (same along every axis).
        kernel_type: ``"rectangular"``, ``"triangular"`` or ``"gaussian"`` window (MONAI's kernels).
        smooth_dr: lower clamp of the window variance sums (intensity units squared).
        chunk_size: approximate number of voxels per slab (batch and channels included) under autograd.
        reduction: ``"mean"``/``"sum"`` over voxels, channels and batch, or ``"none"`` for the ``(B, C, *S)`` map.

    References:
        Zhu Z., et al. Joint affine and deformable three-dimensional networks for brain MRI registration.
        Medical Physics 48(3), 2021 (arXiv 2020), eq. (2).
        Balakrishnan G., et al. VoxelMorph: a learning framework for deformable medical image registration.
        IEEE TMI 38(8), 2019.
    """

    def __init__(
        self,
        kernel_size: int = 9,
        kernel_type: str = "rectangular",
        smooth_dr: float = 1e-5,
        chunk_size: int = 2**20,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.reduction = check_reduction(reduction, name)
        if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{name}: `kernel_size` must be a positive odd integer, got {kernel_size}.")
        if kernel_type not in ("rectangular", "triangular", "gaussian"):
            raise ValueError(f"{name}: unknown `kernel_type` {kernel_type!r}.")
        if chunk_size < 1:
            raise ValueError(f"{name}: `chunk_size` must be >= 1, got {chunk_size}.")
        self.kernel_size = int(kernel_size)
        self.chunk_size = int(chunk_size)
        self._lncc = nn.ModuleDict(
            {
                str(d): _MonaiLNCC(
                    spatial_dims=d,
                    kernel_size=self.kernel_size,
                    kernel_type=kernel_type,
                    reduction="none",
                    smooth_nr=0.0,
                    smooth_dr=smooth_dr,
                )
                for d in (2, 3)
            }
        )

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        dims = check_pair(pred, target, type(self).__name__, mask)
        with torch.autocast(device_type=pred.device.type, enabled=False):  # window sums need >= float32
            return reduce(self._map(_full(pred), _full(target), dims), self.reduction, mask)

    def _map(self, pred: torch.Tensor, target: torch.Tensor, dims: int) -> torch.Tensor:
        axes = _spatial(pred)
        pred = pred - pred.mean(dim=axes, keepdim=True)
        target = target - target.mean(dim=axes, keepdim=True)
        lncc = self._lncc[str(dims)]
        n, radius = pred.shape[2], self.kernel_size // 2
        rows = max(1, self.chunk_size // max(1, pred[:, :, :1].numel()))
        use_ckpt = torch.is_grad_enabled() and (pred.requires_grad or target.requires_grad)
        if rows >= n or not use_ckpt:
            return _lncc_slab(pred, target, lncc, 0, n)
        # slabs along the first spatial axis, each with `radius` rows of real neighbours on either side
        # (the zero padding beyond them only reaches rows that are cropped away); checkpointed, so only one
        # slab's intermediates are alive at a time
        slabs = []
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            lo, hi = max(0, start - radius), min(n, stop + radius)
            fn = functools.partial(_lncc_slab, lncc=lncc, start=start - lo, stop=stop - lo)
            slabs.append(checkpoint(fn, pred[:, :, lo:hi], target[:, :, lo:hi], use_reentrant=False))
        return torch.cat(slabs, dim=2)


def _lncc_slab(pred: torch.Tensor, target: torch.Tensor, lncc: nn.Module, start: int, stop: int) -> torch.Tensor:
    """``1 - clamp(LNCC^2, 0, 1)`` of a slab, rows ``start:stop`` of the first spatial axis."""
    return 1.0 - lncc(pred, target)[:, :, start:stop].neg().clamp(0.0, 1.0)


def valid_lncc_map(pred: torch.Tensor, target: torch.Tensor, kernel_size: int, smooth_dr: float = 1e-5) -> torch.Tensor:
    """``1 - clamp(LNCC^2, 0, 1)`` on the windows that lie wholly inside the image ("valid" mode).

    The same quantity as :class:`LocalNCCLoss`'s map with a rectangular window (each sample centred by its mean,
    window variances clamped at ``smooth_dr``), but only where the window needs no padding: the output is
    ``(B, C, *(S - kernel_size + 1))`` and equals that map cropped by ``kernel_size // 2`` on every side. Window
    sums are separable sums of shifted slices (no convolution), which on CPU makes it several times cheaper
    than the padded map on many small blocks, e.g. the random cubes of the instance optimiser.
    """
    k = int(kernel_size)
    if k < 1 or k % 2 == 0 or any(s < k for s in pred.shape[2:]):
        raise ValueError(f"valid_lncc_map: kernel_size must be odd and <= every spatial size, got {kernel_size}.")
    axes = _spatial(pred)
    p = pred - pred.mean(dim=axes, keepdim=True)
    t = target - target.mean(dim=axes, keepdim=True)
    stats = torch.stack([p, t, p * p, t * t, p * t])  # (5, B, C, *S)
    for axis in range(3, stats.ndim):
        n = stats.shape[axis] - k + 1
        total = stats.narrow(axis, 0, n)
        for j in range(1, k):
            total = total + stats.narrow(axis, j, n)
        stats = total
    sp, st, spp, stt, spt = stats.unbind(0)
    vol = float(k ** len(axes))
    cross = spt - sp * st / vol
    p_var = (spp - sp * sp / vol).clamp(min=smooth_dr)
    t_var = (stt - st * st / vol).clamp(min=smooth_dr)
    return 1.0 - (cross * cross / (p_var * t_var)).clamp(0.0, 1.0)


class NGFLoss(nn.Module):
    """Normalised gradient fields distance (Haber & Modersitzki 2007, as used by Hering et al. 2019).

    Per voxel ``1 - (<g_p, g_t> + eps^2)^2 / ((|g_p|^2 + eps^2) (|g_t|^2 + eps^2))`` with ``g = grad image``
    in intensity per mm: central differences inside, one-sided at the border (:func:`torch.gradient`),
    divided by ``spacing``. This is one minus the squared cosine between the extended vectors ``(g_p, eps)``
    and ``(g_t, eps)``. Where both gradients are much larger than ``eps`` it depends on their directions
    only, so it is nearly invariant to monotonic intensity remappings of either image, contrast inversion
    included (exactly so only where ``|<g_p, g_t>| >> eps^2`` and both ``|g| >> eps``; a remapping that pushes
    gradient magnitudes across ``eps`` changes the value).

    The edge parameter ``eps`` (intensity per mm) separates edges from noise: gradients with ``|g| >> eps``
    count by direction only, those with ``|g| << eps`` are treated as flat; two flat regions count as aligned
    (value 0), which is what the ``+ eps^2`` in the numerator (Hering et al.'s form) adds to Haber &
    Modersitzki's ``<n_p, n_t>^2``. Choose ``eps`` around the noise level of the gradient magnitude
    (Haber & Modersitzki); for images scaled to ``[0, 1]`` at 1 mm, a few hundredths to the default 0.1.

    Sign, range, optimum: ``[0, 1]``; ``0`` when the extended gradients ``(g, eps)`` are parallel everywhere
    (in particular for identical images); close to 0 for anti-parallel gradients much larger than ``eps``.

    Args:
        epsilon: edge parameter ``eps`` in intensity units per mm.
        spacing: voxel size in mm along each spatial axis (array order); None means 1 mm.
        reduction: ``"mean"``/``"sum"`` over voxels, channels and batch, or ``"none"`` for the ``(B, C, *S)`` map.

    References:
        Haber E., Modersitzki J. Intensity gradient based registration and fusion of multi-modal images.
        Methods of Information in Medicine 46(3), 2007.
        Hering A., van Ginneken B., Heldmann S. mlVIRNET: multilevel variational image registration network.
        MICCAI 2019.
    """

    def __init__(self, epsilon: float = 0.1, spacing: Sequence[float] | None = None, reduction: str = "mean") -> None:
        super().__init__()
        name = type(self).__name__
        self.reduction = check_reduction(reduction, name)
        if epsilon <= 0:
            raise ValueError(f"{name}: `epsilon` must be > 0, got {epsilon}.")
        self.epsilon = float(epsilon)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        name = type(self).__name__
        dims = check_pair(pred, target, name, mask, min_size=2)
        spacing = list(check_spacing(self.spacing, dims, name))
        axes = _spatial(pred)
        gp = torch.gradient(pred, spacing=spacing, dim=axes)
        gt = torch.gradient(target, spacing=spacing, dim=axes)
        e2 = self.epsilon**2
        dot = sum(p * t for p, t in zip(gp, gt)) + e2
        norm_p = sum(p * p for p in gp) + e2
        norm_t = sum(t * t for t in gt) + e2
        return reduce(1.0 - dot * dot / (norm_p * norm_t), self.reduction, mask)
