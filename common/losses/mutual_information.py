"""Mutual information for multi-modal registration: a Gaussian-Parzen joint histogram, value to minimise.

Same input contract as :mod:`common.losses.image` (``pred``/``target`` ``(B, C, *S)``, optional voxel-weight
``mask``, reduction through :func:`common.losses._reduction.reduce`).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from common.losses._checks import check_pair
from common.losses._reduction import check_reduction, reduce
from common.losses.image import _full

__all__ = ["MutualInformationLoss"]


def _parzen_joint_histogram(
    a: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None, centres: torch.Tensor, preterm: float
) -> torch.Tensor:
    """Unnormalised joint histogram ``(M, bins, bins)`` of rows ``a``, ``b`` ``(M, n)`` with Gaussian windows."""
    wa = torch.softmax(-preterm * (a.unsqueeze(-1) - centres) ** 2, dim=-1)  # (M, n, bins), rows sum to 1
    wb = torch.softmax(-preterm * (b.unsqueeze(-1) - centres) ** 2, dim=-1)
    if w is not None:
        wa = wa * w.unsqueeze(-1)
    return torch.bmm(wa.transpose(1, 2), wb)


class MutualInformationLoss(nn.Module):
    """Negative mutual information ``-(H(A) + H(B) - H(A, B))`` from a Gaussian-Parzen joint histogram.

    Intensities must lie in ``[0, 1]``: with ``normalise="minmax"`` each sample and channel is rescaled by its
    own min and max (a constant image becomes 0); with ``normalise=None`` values outside ``[0, 1]`` (beyond a
    ``1e-5`` rounding tolerance) raise ``ValueError``. Nothing is clamped silently, unlike MONAI's
    :class:`~monai.losses.GlobalMutualInformationLoss` (MONAI issue 2755), which is therefore not reused. Each
    voxel spreads a unit of mass over ``num_bins`` equally spaced bin centres in ``[0, 1]`` with Gaussian
    weights of standard deviation ``sigma_ratio`` bin widths (normalised per voxel); the joint histogram is
    ``sum_n w_n * wa_n^T wb_n``, marginals are its row/column sums, and
    ``H(p) = -sum p log(p + eps)``.

    Memory: the ``(N voxels x bins)`` window weights are built ``chunk_size`` voxels at a time and the joint
    histogram is accumulated with one matmul per chunk; under autograd each chunk is checkpointed, so the
    backward pass recomputes one chunk at a time and no ``N x bins`` (let alone ``N x bins x bins``) tensor
    is ever alive. Measured for ``1x1x160x192x224`` float32, 32 bins, forward + backward on CPU: about
    +0.3 GB live memory (+0.36 to +0.39 GB peak RSS), against +5.9 GB for MONAI's loss. The default chunk
    (``2**18`` voxels, 32 MB blocks at 32 bins) is large enough for glibc to return freed blocks to the
    system; ``2**16`` had the same live peak but fragmented the heap to +1.4 GB RSS.

    Sign, range, optimum: ``-MI`` in ``[-log(num_bins), 0]`` (nats); ``0`` for independent images, lowest
    (about ``-H(A)``, the Parzen entropy of the image) when one image is a bijective function of the other.
    Under ``normalise="minmax"`` exactly invariant to any affine intensity remapping of either image
    (increasing, or decreasing: the bins mirror) and, up to binning effects (within 15 % in the tests), to
    monotonic non-linear remappings.

    Args:
        num_bins: number of histogram bins per image.
        sigma_ratio: Parzen window standard deviation in bin widths.
        normalise: ``"minmax"`` or ``None`` (require inputs in ``[0, 1]``).
        eps: added inside the logarithms.
        chunk_size: voxels per chunk of the histogram computation.
        reduction: over the per-sample, per-channel values ``(B, C)``.

    References:
        Han L., Dou H., Huang Y., Yap P.-T. Deformable registration of brain MR images via a hybrid loss.
        arXiv:2110.15027, 2021.
        Viola P., Wells W. M. Alignment by maximization of mutual information. IJCV 24, 1997.
    """

    def __init__(
        self,
        num_bins: int = 32,
        sigma_ratio: float = 0.5,
        normalise: str | None = None,
        eps: float = 1e-10,
        chunk_size: int = 2**18,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.reduction = check_reduction(reduction, name)
        if int(num_bins) != num_bins or num_bins < 2:
            raise ValueError(f"{name}: `num_bins` must be an integer >= 2, got {num_bins}.")
        if sigma_ratio <= 0 or eps <= 0 or chunk_size < 1:
            raise ValueError(
                f"{name}: `sigma_ratio`, `eps` and `chunk_size` must be > 0, got {sigma_ratio}, {eps}, {chunk_size}."
            )
        if normalise not in (None, "minmax"):
            raise ValueError(f"{name}: `normalise` must be None or 'minmax', got {normalise!r}.")
        self.num_bins = int(num_bins)
        self.normalise = normalise
        self.eps = float(eps)
        self.chunk_size = int(chunk_size)
        sigma = sigma_ratio / (self.num_bins - 1)
        self.preterm = 1.0 / (2.0 * sigma * sigma)
        self.register_buffer("centres", torch.linspace(0.0, 1.0, self.num_bins), persistent=False)

    def _prepare(self, x: torch.Tensor, name: str) -> torch.Tensor:
        flat = x.flatten(2).flatten(0, 1)  # (B*C, N)
        if self.normalise == "minmax":
            lo = flat.amin(dim=1, keepdim=True)
            hi = flat.amax(dim=1, keepdim=True)
            return (flat - lo) / (hi - lo).clamp_min(torch.finfo(x.dtype).eps)
        lo, hi = float(flat.detach().min()), float(flat.detach().max())
        if lo < -1e-5 or hi > 1.0 + 1e-5:
            raise ValueError(
                f"{type(self).__name__}: `{name}` has values in [{lo:.4g}, {hi:.4g}] outside [0, 1] (shape "
                f"{tuple(x.shape)}); rescale the images or pass normalise='minmax' (values are never clamped)."
            )
        return flat

    def joint_histogram(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalised joint histogram ``(B * C, bins, bins)`` (rows: ``pred`` bins, columns: ``target`` bins)."""
        check_pair(pred, target, type(self).__name__, mask)
        with torch.autocast(device_type=pred.device.type, enabled=False):  # fp16 bin sums would overflow
            return self._histogram(_full(pred), _full(target), mask)

    def _histogram(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        a, b = self._prepare(pred, "pred"), self._prepare(target, "target")
        w = None
        if mask is not None:
            m = mask.to(pred.dtype).expand(pred.shape[0], pred.shape[1], *pred.shape[2:])
            w = m.flatten(2).flatten(0, 1)
        centres = self.centres.to(a)
        fn = functools.partial(_parzen_joint_histogram, centres=centres, preterm=self.preterm)
        use_ckpt = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
        hist = a.new_zeros(a.shape[0], self.num_bins, self.num_bins)
        for s in range(0, a.shape[1], self.chunk_size):
            sl = slice(s, s + self.chunk_size)
            args = (a[:, sl], b[:, sl], None if w is None else w[:, sl])
            hist = hist + (checkpoint(fn, *args, use_reentrant=False) if use_ckpt else fn(*args))
        if w is None:
            return hist / a.shape[1]
        return hist / w.sum(dim=1).clamp_min(torch.finfo(a.dtype).tiny).view(-1, 1, 1)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        p_ab = self.joint_histogram(pred, target, mask)

        def entropy(p: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
            return -(p * torch.log(p + self.eps)).sum(dim=dims)

        mi = entropy(p_ab.sum(2), (1,)) + entropy(p_ab.sum(1), (1,)) - entropy(p_ab, (1, 2))
        return reduce(-mi.view(pred.shape[0], pred.shape[1]), self.reduction)
