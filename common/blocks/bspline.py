"""Cubic B-spline free-form deformation: control-point grid -> dense displacement (2D and 3D)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["bspline_basis", "control_grid_shape", "bspline_weights", "BSplineTransformer"]


def bspline_basis(t: torch.Tensor) -> torch.Tensor:
    """Uniform cubic B-spline ``B3(t)``: support ``|t| < 2``, partition of unity on integer shifts."""
    a = t.abs()
    inner = 2.0 / 3.0 - a**2 + 0.5 * a**3
    outer = (2.0 - a).clamp(min=0) ** 3 / 6.0
    return torch.where(a < 1, inner, outer)


def control_grid_shape(shape: Sequence[int], stride: Sequence[int] | int) -> tuple[int, ...]:
    """Number of control points per axis so that every voxel of ``shape`` has full cubic support.

    Control point ``j`` sits at voxel ``(j - 1) * stride``: one extra point before the first voxel and
    enough after the last one.
    """
    strides = _strides(stride, len(shape))
    return tuple(int(math.ceil((int(n) - 1) / s)) + 3 for n, s in zip(shape, strides))


def _strides(stride: Sequence[int] | int, dims: int) -> tuple[int, ...]:
    strides = (int(stride),) * dims if isinstance(stride, int) else tuple(int(s) for s in stride)
    if len(strides) != dims or min(strides) < 1:
        raise ValueError(f"BSplineTransformer: `stride` must be a positive int or {dims} of them, got {stride}.")
    return strides


def bspline_weights(n_vox: int, n_cp: int, stride: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(n_vox, n_cp)`` matrix W with ``field[x] = sum_j W[x, j] * c[j]`` along one axis."""
    x = torch.arange(n_vox, dtype=dtype, device=device).unsqueeze(1) / stride
    j = torch.arange(n_cp, dtype=dtype, device=device).unsqueeze(0) - 1
    return bspline_basis(x - j)


class BSplineTransformer(nn.Module):
    """Dense displacement from cubic B-spline control-point displacements (separable, exact, differentiable).

    Args:
        stride: control-point spacing in voxels of the output grid (int or one per axis).

    Forward args:
        control_points: ``(B, D, *C)`` control-point displacements in **voxels of the output grid**,
            array order; ``C`` usually ``control_grid_shape(shape, stride)``.
        shape: output spatial shape ``S``.

    Returns:
        ``(B, D, *S)`` displacement in voxels (the :mod:`common.conventions` DDF). Constant control
        points give the same constant field (partition of unity); linear control points give a linear field.

    References:
        Rueckert et al., "Nonrigid registration using free-form deformations", IEEE TMI 1999.
    """

    def __init__(self, stride: Sequence[int] | int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, control_points: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        cp = control_points
        if cp.ndim not in (4, 5) or cp.shape[1] != cp.ndim - 2:
            raise ValueError(
                f"BSplineTransformer: `control_points` must have shape (B, D, *C) with D == len(C) in (2, 3), "
                f"got shape {tuple(cp.shape)}."
            )
        dims = cp.ndim - 2
        shape = tuple(int(n) for n in shape)
        if len(shape) != dims:
            raise ValueError(f"BSplineTransformer: `shape` {shape} must have {dims} entries.")
        strides = _strides(self.stride, dims)
        needed = control_grid_shape(shape, strides)
        if any(c < n for c, n in zip(cp.shape[2:], needed)):
            raise ValueError(
                f"BSplineTransformer: control grid {tuple(cp.shape[2:])} too small for output {shape} with "
                f"stride {strides}; need at least {needed}."
            )
        out = cp
        for axis in range(dims):
            w = bspline_weights(shape[axis], cp.shape[2 + axis], strides[axis], cp.dtype, cp.device)
            out = torch.movedim(torch.movedim(out, 2 + axis, -1) @ w.T, -1, 2 + axis)
        return out
