"""MIND-SSC: modality-independent neighbourhood descriptors with the self-similarity context, and a loss on them.

Definition (Heinrich et al. 2013, the SSC variant of the MIND descriptor of Heinrich et al. 2012), for an image
``I`` with ``D`` spatial dimensions, dilation ``d`` (voxels) and patch radius ``r`` (voxels):

* the six-neighbourhood ``N = {+-e_k}`` (four in 2D) and its pairs of neighbours at distance ``sqrt(2)``, i.e. on
  different axes: ``P = {(a, b) in N x N, a != b, a != -b}`` taken once each (12 pairs in 3D, 4 in 2D; the order
  is fixed by :func:`ssc_pairs`);
* patch distances ``D_ab(x) = mean_{|p|_inf <= r} ( I(x + p + d a) - I(x + p + d b) )^2`` (a box of
  ``(2r + 1)^D`` voxels); every sample outside the image repeats the nearest border voxel (replicate padding);
* the local variance estimate ``V(x) = mean_ab D_ab(x)``, clamped to ``[1e-3, 1e3] * mean_x V`` (the mean over
  the image; keeps flat backgrounds and strong edges from giving 0/0 or 0-width descriptors);
* the descriptor ``MIND_ab(x) = exp(-D_ab(x) / V(x)) / max_cd exp(-D_cd(x) / V(x))``, so that its largest
  channel is 1 at every voxel; channels are in ``(0, 1]``.

It describes local structure, not intensity, so images of different contrast (T1 against a T1 template with
another intensity scale, MR against CT) can be compared by the squared difference of their descriptors.

:class:`MINDSSCLoss` returns ``mean_ab (MIND_ab(pred) - MIND_ab(target))^2`` per voxel, reduced by
:func:`common.losses.reduce`. Sign, range, optimum: ``[0, 1]``, 0 when both images have the same descriptors.

References:
    Heinrich M. P., et al. MIND: Modality independent neighbourhood descriptor for multi-modal deformable
    registration. Medical Image Analysis 16(7), 2012.
    Heinrich M. P., Jenkinson M., Papiez B. W., Brady M., Schnabel J. A. Towards realtime multimodal fusion for
    image-guided interventions using self-similarities. MICCAI 2013.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from common.losses._checks import check_pair
from common.losses._reduction import check_reduction, reduce

__all__ = ["ssc_pairs", "box_mean", "mind_ssc", "MINDSSCLoss"]


def ssc_pairs(dims: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The pairs ``(a, b)`` of unit neighbour offsets on different axes (12 in 3D, 4 in 2D), in a fixed order."""
    if dims not in (2, 3):
        raise ValueError(f"ssc_pairs: dims must be 2 or 3, got {dims}.")
    neighbours = []
    for k in range(dims):
        for sign in (-1, 1):
            off = [0] * dims
            off[k] = sign
            neighbours.append(tuple(off))
    pairs = []
    for i, a in enumerate(neighbours):
        for b in neighbours[i + 1 :]:
            if sum(abs(x - y) for x, y in zip(a, b)) == 2 and all(x != -y or x == 0 for x, y in zip(a, b)):
                pairs.append((a, b))
    return pairs


def _shift(padded: torch.Tensor, offset: tuple[int, ...], pad: int, size: tuple[int, ...]) -> torch.Tensor:
    """``I(x + offset)`` for every ``x`` of the unpadded grid, from an image padded by ``pad`` on every side."""
    index = [slice(None), slice(None)]
    index += [slice(pad + o, pad + o + n) for o, n in zip(offset, size)]
    return padded[tuple(index)]


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a ``(2r + 1)^D`` box around every voxel of ``x`` ``(B, C, *S)``, replicate padding, same size.

    Separable sums of shifted slices (on CPU several times faster than ``avg_pool3d`` with a stride of 1).
    """
    if radius == 0:
        return x
    if x.requires_grad and torch.is_grad_enabled():
        return _BoxMean.apply(x, int(radius))
    return _box_mean(x, radius)


def _box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    dims = x.ndim - 2
    width = 2 * radius + 1
    x = F.pad(x, [radius] * (2 * dims), mode="replicate")
    for axis in range(2, x.ndim):
        n = x.shape[axis] - 2 * radius
        total = x.narrow(axis, 0, n).clone()
        for k in range(1, width):
            total.add_(x.narrow(axis, k, n))
        x = total
    return x.div_(width**dims)


class _BoxMean(torch.autograd.Function):
    """:func:`box_mean` with its adjoint accumulated in place (autograd through the shifted slices would allocate
    a zero tensor of the padded size for every slice: most of the smoothing's cost in instance optimisation)."""

    @staticmethod
    def forward(ctx, x, radius):  # type: ignore[override]
        ctx.radius = radius
        return _box_mean(x, radius)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        r, dims = ctx.radius, grad.ndim - 2
        g = grad / (2 * r + 1) ** dims
        for axis in reversed(range(2, grad.ndim)):  # adjoint of the box sums: spread each value over its window
            n = g.shape[axis]
            shape = list(g.shape)
            shape[axis] = n + 2 * r
            spread = g.new_zeros(shape)
            for k in range(2 * r + 1):
                spread.narrow(axis, k, n).add_(g)
            g = spread
        for axis in range(2, grad.ndim):  # adjoint of the replicate padding: the pad slices go back to the edges
            n = g.shape[axis] - 2 * r
            g.narrow(axis, r, 1).add_(g.narrow(axis, 0, r).sum(dim=axis, keepdim=True))
            g.narrow(axis, r + n - 1, 1).add_(g.narrow(axis, r + n, r).sum(dim=axis, keepdim=True))
            g = g.narrow(axis, r, n)
        return g.contiguous(), None


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptors of ``image`` ``(B, 1, *S)`` (2D or 3D): ``(B, P, *S)``, ``P`` = 12 in 3D, 4 in 2D.

    Args:
        image: one-channel image (any intensity scale).
        radius: patch radius ``r`` in voxels (box of ``2r + 1`` per axis); 0 compares single voxels.
        dilation: neighbour distance ``d`` in voxels.

    Returns:
        Descriptors in ``(0, 1]`` (module docstring), same dtype and device as ``image``.
    """
    if image.ndim not in (4, 5) or image.shape[1] != 1:
        raise ValueError(f"mind_ssc: expected an image (B, 1, *S) in 2D or 3D, got shape {tuple(image.shape)}.")
    if int(radius) != radius or radius < 0 or int(dilation) != dilation or dilation < 1:
        raise ValueError(f"mind_ssc: radius must be an integer >= 0 and dilation >= 1, got {radius}, {dilation}.")
    dims = image.ndim - 2
    size = tuple(image.shape[2:])
    padded = F.pad(image, [dilation] * (2 * dims), mode="replicate")
    inplace = not (image.requires_grad and torch.is_grad_enabled())  # same values, ~half the memory traffic
    d = torch.empty((image.shape[0], len(ssc_pairs(dims)), *size), dtype=image.dtype, device=image.device)
    parts = []
    for k, (a, b) in enumerate(ssc_pairs(dims)):
        sa = _shift(padded, tuple(dilation * v for v in a), dilation, size)
        sb = _shift(padded, tuple(dilation * v for v in b), dilation, size)
        if inplace:
            torch.sub(sa, sb, out=d[:, k : k + 1]).square_()
        else:
            parts.append((sa - sb) ** 2)
    d = box_mean(d if inplace else torch.cat(parts, dim=1), radius)
    var = d.mean(dim=1, keepdim=True)
    level = var.mean(dim=tuple(range(1, var.ndim)), keepdim=True)
    var = torch.maximum(torch.minimum(var, level * 1e3), level * 1e-3).clamp_min(torch.finfo(d.dtype).tiny)
    if inplace:
        return d.sub_(d.min(dim=1, keepdim=True).values).div_(var).neg_().exp_()
    return torch.exp(-(d - d.min(dim=1, keepdim=True).values) / var)


class MINDSSCLoss(nn.Module):
    """Mean squared difference of MIND-SSC descriptors (module docstring), 2D or 3D.

    Sign, range, optimum: ``[0, 1]``; 0 when ``pred`` and ``target`` have the same descriptors (e.g. the same
    image up to a positive intensity scale).

    Args:
        radius: patch radius in voxels.
        dilation: neighbour distance in voxels.
        reduction: ``"mean"``/``"sum"`` over voxels and batch, or ``"none"`` for the ``(B, 1, *S)`` map.
    """

    def __init__(self, radius: int = 1, dilation: int = 2, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, type(self).__name__)
        if int(radius) != radius or radius < 0 or int(dilation) != dilation or dilation < 1:
            raise ValueError(
                f"MINDSSCLoss: radius must be an integer >= 0 and dilation >= 1, got {radius}, {dilation}."
            )
        self.radius, self.dilation = int(radius), int(dilation)

    def descriptors(self, image: torch.Tensor) -> torch.Tensor:
        """:func:`mind_ssc` with this loss's settings."""
        return mind_ssc(image, self.radius, self.dilation)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_pair(pred, target, type(self).__name__, mask)
        if pred.shape[1] != 1:
            raise ValueError(f"MINDSSCLoss: expected one-channel images (B, 1, *S), got {tuple(pred.shape)}.")
        diff = self.descriptors(pred) - self.descriptors(target)
        return reduce((diff * diff).mean(dim=1, keepdim=True), self.reduction, mask)
