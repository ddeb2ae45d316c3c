"""Smoothness regularisers of a displacement field ``(B, D, *S)`` in voxels (see :mod:`common.conventions`).

All derivatives are finite differences in voxel units (no spacing: the field is in voxels of its own grid).
Each regulariser evaluates its stencil only where the stencil fits inside the grid (no padding, no boundary
conditions), so no artificial boundary term appears: the curvature and bending energies are zero up to
rounding for *every* affine field, and the gradient (diffusion) energy is zero for every translation and
equals ``mean(A^2)`` for the affine field ``u(x) = A x + t``. A ``mask`` ``(B, 1, *S)`` or ``(1, 1, *S)``
weights voxels and is cropped to the same domain; reduction goes through
:func:`common.losses._reduction.reduce` (``"none"`` returns the per-voxel energy map ``(B, 1, *S')``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from common.conventions import check_ddf
from common.losses._checks import check_mask, crop_interior
from common.losses._reduction import check_reduction, reduce

__all__ = ["GradientRegulariser", "CurvatureRegulariser", "BendingEnergyRegulariser", "FoldingPenalty"]


def _check(ddf: torch.Tensor, mask: torch.Tensor | None, caller: str, min_size: int) -> int:
    dims = check_ddf(ddf, caller=caller)
    if not ddf.is_floating_point():
        raise TypeError(f"{caller}: `ddf` must be floating point, got dtype {ddf.dtype} (shape {tuple(ddf.shape)}).")
    if min(ddf.shape[2:]) < min_size:
        raise ValueError(
            f"{caller}: every spatial axis needs at least {min_size} voxels, got `ddf` shape {tuple(ddf.shape)}."
        )
    check_mask(mask, ddf, caller)
    return dims


def _interior(x: torch.Tensor, offset: dict[int, int] | None = None) -> torch.Tensor:
    """Values ``x[..., i + o]`` for interior indices ``i`` in ``[1, n - 1)`` of every spatial axis.

    ``offset`` maps a spatial axis (0-based) to ``o`` in ``{-1, 0, 1}`` (default 0).
    """
    offset = offset or {}
    index = (slice(None), slice(None)) + tuple(
        slice(1 + offset.get(k, 0), n - 1 + offset.get(k, 0)) for k, n in enumerate(x.shape[2:])
    )
    return x[index]


def _shift(x: torch.Tensor, axis: int, start: int, stop: int) -> torch.Tensor:
    """Slice spatial ``axis`` (0-based) of ``(B, C, *S)`` to ``[start : n - stop]``, others untouched."""
    index = [slice(None)] * x.ndim
    index[axis + 2] = slice(start, x.shape[axis + 2] - stop)
    return x[tuple(index)]


def _crop(dims: int) -> tuple[slice, ...]:
    return (slice(None), slice(None), *[slice(0, -1)] * dims)


def _shifted(dims: int, k: int) -> tuple[slice, ...]:
    return (slice(None), slice(None), *[slice(1, None) if j == k else slice(0, -1) for j in range(dims)])


def _differences(ddf: torch.Tensor) -> torch.Tensor:
    dims = ddf.ndim - 2
    base = ddf[_crop(dims)]
    out = ddf.new_empty((*base.shape[:2], dims, *base.shape[2:]))
    for k in range(dims):
        torch.sub(ddf[_shifted(dims, k)], base, out=out[:, :, k])
    return out


def _difference_adjoint(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Adjoint of :func:`_differences`, accumulated in place into one tensor of the field's ``shape``."""
    dims = len(shape) - 2
    out = grad.new_zeros(shape)
    out[_crop(dims)] -= grad.sum(dim=2)
    for k in range(dims):
        out[_shifted(dims, k)] += grad[:, :, k]
    return out


class _ForwardDifferences(torch.autograd.Function):
    """``d[:, i, k] = u_i(x + e_k) - u_i(x)`` on the common domain ``[0, n - 1)`` of every axis, ``(B, D, D, *S')``.

    Autograd through the slices of each difference would allocate a zero tensor of the field's size for every
    slice in the backward pass (most of a 1 mm instance-optimisation step's regulariser time); here the adjoint
    is accumulated in place into one gradient tensor."""

    @staticmethod
    def forward(ctx, ddf):  # type: ignore[override]
        ctx.shape = ddf.shape
        return _differences(ddf)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        return _difference_adjoint(grad, ctx.shape)


class _MeanSquaredDifferences(torch.autograd.Function):
    """``GradientRegulariser("l2")`` with ``reduction="mean"`` and no mask, one axis' differences at a time: the
    ``D x D`` differences and their squares are not held through the rest of the loss (the 1 mm peak RAM)."""

    @staticmethod
    def forward(ctx, ddf):  # type: ignore[override]
        dims = ddf.ndim - 2
        base = ddf[_crop(dims)]
        ctx.scale = 1.0 / (dims * dims * base[:, :1].numel())
        total = ddf.new_zeros(())
        for k in range(dims):
            d = ddf[_shifted(dims, k)] - base
            total += (d * d).sum()  # cascade summation (a float32 dot product loses digits at 1 mm)
        ctx.save_for_backward(ddf)
        return total * ctx.scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        (ddf,) = ctx.saved_tensors
        dims = ddf.ndim - 2
        base = ddf[_crop(dims)]
        out = torch.zeros_like(ddf)
        for k in range(dims):
            d = (ddf[_shifted(dims, k)] - base).mul_(2.0 * ctx.scale * grad)
            out[_shifted(dims, k)] += d
            out[_crop(dims)] -= d
        return out


class _MeanFoldBarrier(torch.autograd.Function):
    """``FoldingPenalty`` with ``reduction="mean"`` and no mask; saves only the field and recomputes differences
    and cofactors in the backward pass (their ``D x D`` channels are not held through the rest of the loss)."""

    @staticmethod
    def forward(ctx, ddf, margin):  # type: ignore[override]
        det = _determinant(_jacobian_entries(_differences(ddf)))
        ctx.save_for_backward(ddf)
        ctx.margin = margin
        return torch.relu(margin - det).pow(2).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        (ddf,) = ctx.saved_tensors
        dims = ddf.ndim - 2
        j = _jacobian_entries(_differences(ddf))
        det = _determinant(j)
        weight = torch.relu(ctx.margin - det).mul_(-2.0 * grad / det.numel())
        out = torch.zeros_like(ddf)
        for r in range(dims):  # d det / d J_rc = cofactor C_rc; J_rc - delta_rc = u_r(x + e_c) - u_r(x)
            for c in range(dims):
                g = _cofactor(j, r, c).mul_(weight)
                out[_crop(dims)][:, r] -= g
                out[_shifted(dims, c)][:, r] += g
        return out, None


def _jacobian_entries(diff: torch.Tensor) -> list[list[torch.Tensor]]:
    """``J[r][c] = delta_rc + diff[:, r, c]``: new tensors on the diagonal, views elsewhere."""
    dims = diff.shape[1]
    return [[diff[:, r, c] + 1.0 if r == c else diff[:, r, c] for c in range(dims)] for r in range(dims)]


def _cofactor(j: list[list[torch.Tensor]], r: int, c: int) -> torch.Tensor:
    """Cofactor ``C_rc`` of the 2x2 or 3x3 matrix of tensors ``j`` (a new tensor)."""
    if len(j) == 2:
        return j[1 - r][1 - c] * (1.0 if r == c else -1.0)
    a, b = (r + 1) % 3, (r + 2) % 3  # cyclic indices give the cofactor's sign
    p, q = (c + 1) % 3, (c + 2) % 3
    return j[a][p] * j[b][q] - j[a][q] * j[b][p]


def _determinant(j: list[list[torch.Tensor]]) -> torch.Tensor:
    """``det J`` per voxel of the 2x2 or 3x3 matrix of tensors ``j`` (expansion along the first row)."""
    return sum(j[0][c] * _cofactor(j, 0, c) for c in range(len(j)))


def forward_jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """``det(I + grad u)`` ``(B, *(S - 1))`` of a field ``(B, D, *S)`` (voxels) from forward differences, as
    :class:`FoldingPenalty` takes it; differentiable (plain autograd)."""
    return _determinant(_jacobian_entries(forward_differences(ddf)))


def forward_differences(ddf: torch.Tensor) -> torch.Tensor:
    """Forward differences ``(B, D, D, *(S - 1))`` of a field ``(B, D, *S)``: ``[:, i, k]`` is ``d u_i / d x_k``."""
    return _ForwardDifferences.apply(ddf)


class GradientRegulariser(nn.Module):
    """Diffusion regulariser: mean over voxels and over all ``D x D`` Jacobian entries of ``|d u_j / d x_k|^p``.

    Forward differences ``u(x + e_k) - u(x)`` (voxel units) evaluated on the ``(n_1 - 1) x ... x (n_D - 1)``
    voxels where every forward difference exists. With ``penalty="l2"`` this is VoxelMorph's ``Grad('l2')``
    (the diffusion term of Zhu et al.) up to which boundary face is included (VoxelMorph averages each axis
    over its own ``n_k - 1`` slices); both agree exactly on fields with constant gradient. MONAI's
    :class:`~monai.losses.DiffusionLoss` is not reused: it uses central differences ``(u(x+1) - u(x-1))/2``,
    which are blind to a voxel-wise checkerboard, and sums rather than averages over the axes (``D`` times
    this value on smooth fields).

    Sign, range, optimum: ``>= 0``; ``0`` iff the field is a translation (constant). On an affine field
    ``u(x) = A x + t`` it equals ``mean(A**2)`` (``"l2"``) or ``mean(|A|)`` (``"l1"``), not 0.

    Args:
        penalty: ``"l2"`` (squared differences, diffusion) or ``"l1"`` (absolute differences, total variation
            of each component along each axis).
        reduction: ``"mean"``/``"sum"`` over voxels and batch, or ``"none"`` for the per-voxel map.

    References:
        Balakrishnan G., et al. VoxelMorph: a learning framework for deformable medical image registration.
        IEEE TMI 38(8), 2019.
    """

    def __init__(self, penalty: str = "l2", reduction: str = "mean") -> None:
        super().__init__()
        name = type(self).__name__
        self.reduction = check_reduction(reduction, name)
        if penalty not in ("l1", "l2"):
            raise ValueError(f"{name}: `penalty` must be 'l1' or 'l2', got {penalty!r}.")
        self.penalty = penalty

    def forward(self, ddf: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        dims = _check(ddf, mask, type(self).__name__, min_size=2)
        if self.penalty == "l2" and self.reduction == "mean" and mask is None:
            return _MeanSquaredDifferences.apply(ddf)  # same value, less memory
        diff = forward_differences(ddf)  # on the common domain [0, n - 1) of every axis
        term = diff * diff if self.penalty == "l2" else diff.abs()
        values = term.sum(dim=(1, 2)).unsqueeze(1) / (dims * dims)
        return reduce(values, self.reduction, None if mask is None else crop_interior(mask, 0, 1))


class CurvatureRegulariser(nn.Module):
    """Curvature regulariser ``1/2 * sum_j (Laplacian u_j)^2``, averaged over interior voxels (Hering et al.).

    The Laplacian is the standard ``2D + 1``-point stencil ``sum_k u(x + e_k) - 2 u(x) + u(x - e_k)`` in voxel
    units, evaluated on the interior ``[1, n - 1)`` of every axis only. Fischer & Modersitzki's and Hering et
    al.'s formulations impose Neumann boundary conditions, under which affine fields are penalised at the
    border; evaluating on the interior keeps every affine field in the null space (value 0 up to rounding),
    as intended.

    Sign, range, optimum: ``>= 0``; ``0`` for affine fields (and any field with zero Laplacian, e.g. harmonic).

    Args:
        reduction: ``"mean"``/``"sum"`` over interior voxels and batch, or ``"none"`` for the map
            ``(B, 1, *(S - 2))``.

    References:
        Fischer B., Modersitzki J. Curvature based image registration. JMIV 18, 2003.
        Hering A., van Ginneken B., Heldmann S. mlVIRNET: multilevel variational image registration network.
        MICCAI 2019.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, type(self).__name__)

    def forward(self, ddf: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        dims = _check(ddf, mask, type(self).__name__, min_size=3)
        lap = -2.0 * dims * _interior(ddf)
        for k in range(dims):
            lap = lap + _interior(ddf, {k: 1}) + _interior(ddf, {k: -1})
        values = 0.5 * (lap * lap).sum(dim=1, keepdim=True)
        return reduce(values, self.reduction, None if mask is None else crop_interior(mask, 1, 1))


class BendingEnergyRegulariser(nn.Module):
    """Bending energy ``mean_j sum_{k,l} (d^2 u_j / dx_k dx_l)^2`` on interior voxels (MONAI's definition).

    Same stencils and normalisation as MONAI :class:`~monai.losses.BendingEnergyLoss` (``normalize=False``),
    pinned by a test: pure second derivatives with the ``[1, -2, 1]`` stencil, mixed ones with the 4-point
    central stencil ``(u(+,+) - u(+,-) - u(-,+) + u(-,-)) / 4`` (counted twice), all on the interior
    ``[1, n - 1)`` of every axis, so affine fields give 0 up to rounding. Note MONAI's normalisation: the
    energy is **averaged** over the ``D`` displacement components (the textbook ``sum_j`` is ``D`` times
    larger) and over interior voxels, in voxel units (no spacing, no rescaling by image size). MONAI's class
    is not called directly because MONAI 1.6.1 indexes tensors with a *list* of slices there, which torch
    2.13 deprecates with a warning on every call and has announced will change meaning.

    Sign, range, optimum: ``>= 0``; ``0`` for affine fields.

    Args:
        reduction: ``"mean"``/``"sum"`` over interior voxels and batch, or ``"none"`` for the map
            ``(B, 1, *(S - 2))``.

    References:
        Rueckert D., et al. Nonrigid registration using free-form deformations: application to breast MR
        images. IEEE TMI 18(8), 1999.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, type(self).__name__)

    def forward(self, ddf: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        dims = _check(ddf, mask, type(self).__name__, min_size=3)
        centre = _interior(ddf)
        energy = torch.zeros_like(centre)
        for k in range(dims):
            d_kk = _interior(ddf, {k: 1}) - 2.0 * centre + _interior(ddf, {k: -1})
            energy = energy + d_kk * d_kk
            for l in range(k + 1, dims):
                d_kl = (
                    _interior(ddf, {k: 1, l: 1})
                    - _interior(ddf, {k: 1, l: -1})
                    - _interior(ddf, {k: -1, l: 1})
                    + _interior(ddf, {k: -1, l: -1})
                ) / 4.0
                energy = energy + 2.0 * d_kl * d_kl
        values = energy.mean(dim=1, keepdim=True)  # average over the D components, as MONAI does
        return reduce(values, self.reduction, None if mask is None else crop_interior(mask, 1, 1))


class FoldingPenalty(nn.Module):
    """Folding barrier ``relu(margin - det(I + grad u))^2``, averaged over voxels: zero wherever the map keeps
    its orientation with room to spare, growing quadratically as a voxel approaches or passes a fold.

    The Jacobian uses forward differences ``u(x + e_k) - u(x)`` (voxel units) on the ``(n_1 - 1) x ... x
    (n_D - 1)`` voxels where all exist, as :class:`GradientRegulariser` does; unlike central differences they
    see a voxel-wise checkerboard. The determinant is written out (2x2 or 3x3); with ``reduction="mean"`` and no
    mask the gradient is the cofactor matrix, recomputed in the backward pass (the 1 mm hot path). Used by :class:`~common.engines.instance_optimisation.InstanceOptimiser`
    (``fold_weight``) beside the diffusion regulariser: it leaves smooth regions alone and removes the few
    folded voxels a weak diffusion weight lets through (Learn2Reg's NDV), which is what lets that weight be
    lower. Penalising ``det J <= 0`` this way is a common soft constraint in registration (e.g. Kuang &
    Schmah, FAIM, 2019).

    Sign, range, optimum: ``>= 0``; ``0`` for every field whose forward-difference determinant is ``>= margin``
    everywhere (e.g. zero, translations, mild affine maps).

    Args:
        margin: determinants below this are penalised (``0`` penalises only folds).
        reduction: ``"mean"``/``"sum"`` over voxels and batch, or ``"none"`` for the per-voxel map.
    """

    def __init__(self, margin: float = 0.05, reduction: str = "mean") -> None:
        super().__init__()
        name = type(self).__name__
        self.reduction = check_reduction(reduction, name)
        if not 0 <= margin < 1:
            raise ValueError(f"{name}: `margin` must be in [0, 1), got {margin}.")
        self.margin = float(margin)

    def forward(self, ddf: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check(ddf, mask, type(self).__name__, min_size=2)
        if self.reduction == "mean" and mask is None:
            return _MeanFoldBarrier.apply(ddf, self.margin)  # same value, less memory
        det = forward_jacobian_determinant(ddf)  # masks, per-voxel maps: plain autograd
        values = torch.relu(self.margin - det).pow(2).unsqueeze(1)
        return reduce(values, self.reduction, None if mask is None else crop_interior(mask, 0, 1))
