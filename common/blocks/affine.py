"""Affine transforms as displacement fields (voxel coordinates, array order, pull-back)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from common.blocks.warp import warp
from common.conventions import identity_grid

__all__ = ["identity_affine", "affine_normalised_to_voxel", "affine_to_ddf", "ddf_to_affine", "AffineTransform"]


def identity_affine(batch: int, dims: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``(B, D, D + 1)`` identity matrices ``[I | 0]``."""
    eye = torch.eye(dims, dims + 1, dtype=dtype, device=device)
    return eye.unsqueeze(0).repeat(batch, 1, 1)


def affine_normalised_to_voxel(delta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A change ``[dA | dt]`` ``(B, D, D + 1)`` of an affine map in normalised coordinates (each axis scaled to
    ``[-1, 1]``) as the same change in the centred voxel coordinates of :func:`affine_to_ddf` on a grid of
    ``shape``: ``dA_vox = H dA H^-1``, ``dt_vox = H dt`` with ``H = diag((n - 1) / 2)``. Linear, so changes add in
    either system; it keeps a 12-parameter update equally scaled along short and long axes."""
    dims = delta.shape[1]
    h = torch.tensor([max(int(n) - 1, 1) / 2.0 for n in shape], dtype=delta.dtype, device=delta.device)
    lin = delta[:, :, :dims] * h.view(1, dims, 1) / h.view(1, 1, dims)
    return torch.cat([lin, delta[:, :, dims:] * h.view(1, dims, 1)], dim=2)


def _check_matrix(matrix: torch.Tensor, caller: str) -> int:
    if not isinstance(matrix, torch.Tensor) or matrix.ndim != 3 or matrix.shape[2] != matrix.shape[1] + 1:
        shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
        raise ValueError(f"{caller}: `matrix` must have shape (B, D, D + 1) with D in (2, 3), got {shape}.")
    if matrix.shape[1] not in (2, 3):
        raise ValueError(f"{caller}: `matrix` must be 2x3 (2D, 6 DOF) or 3x4 (3D, 12 DOF), got {tuple(matrix.shape)}.")
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{caller}: `matrix` contains NaN or Inf values.")
    return matrix.shape[1]


def affine_to_ddf(matrix: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Dense displacement of an affine map in centred voxel coordinates.

    The map sends a fixed-grid voxel ``x`` to ``y = A (x - c) + c + t`` in the moving image, where
    ``matrix = [A | t]`` (``t`` in voxels) and ``c = (shape - 1) / 2`` is the grid centre, so the
    identity ``[I | 0]`` is zero displacement and ``A`` rotates/scales about the image centre.

    Args:
        matrix: ``(B, D, D + 1)``; 12 degrees of freedom in 3D, 6 in 2D.
        shape: spatial shape ``S`` of the fixed grid.

    Returns:
        ``(B, D, *S)`` displacement ``y - x`` in voxels.
    """
    dims = _check_matrix(matrix, "affine_to_ddf")
    if len(shape) != dims:
        raise ValueError(f"affine_to_ddf: `shape` {tuple(shape)} must have {dims} entries for a {dims}D matrix.")
    grid = identity_grid(shape, device=matrix.device, dtype=matrix.dtype)  # (1, D, *S)
    centre = torch.tensor([(int(n) - 1) / 2.0 for n in shape], dtype=matrix.dtype, device=matrix.device)
    x = (grid - centre.view(1, dims, *([1] * dims))).flatten(2)  # (1, D, N)
    a = matrix[:, :, :dims] - torch.eye(dims, dtype=matrix.dtype, device=matrix.device)
    disp = a @ x + matrix[:, :, dims:]  # (B, D, N)
    return disp.view(matrix.shape[0], dims, *[int(n) for n in shape])


def ddf_to_affine(ddf: torch.Tensor) -> torch.Tensor:
    """The ``(B, D, D + 1)`` matrix whose :func:`affine_to_ddf` best fits ``ddf`` (least squares; exact for an
    affine field up to float rounding).

    Used to export the affine part of a network that outputs it as a dense field (Zhu et al. 2020) as an ITK
    affine transform. Raises ValueError for a tensor that is not ``(B, D, *S)`` with ``D`` in (2, 3) or holds
    NaN/Inf.
    """
    if not isinstance(ddf, torch.Tensor) or ddf.ndim not in (4, 5) or ddf.shape[1] != ddf.ndim - 2:
        shape = tuple(ddf.shape) if isinstance(ddf, torch.Tensor) else type(ddf).__name__
        raise ValueError(f"ddf_to_affine: `ddf` must be (B, D, *S) with D = 2 or 3 spatial dims, got {shape}.")
    if not torch.isfinite(ddf).all():
        raise ValueError("ddf_to_affine: `ddf` contains NaN or Inf values.")
    dims, shape = ddf.shape[1], ddf.shape[2:]
    x = ddf.double()
    grid = identity_grid(shape, device=x.device, dtype=x.dtype)
    centre = torch.tensor([(int(n) - 1) / 2.0 for n in shape], dtype=x.dtype, device=x.device)
    coords = (grid - centre.view(1, dims, *([1] * dims))).flatten(2)[0].T  # (N, D)
    design = torch.cat([coords, torch.ones_like(coords[:, :1])], dim=1)  # (N, D + 1)
    target = x.flatten(2).transpose(1, 2)  # (B, N, D)
    sol = torch.linalg.lstsq(design.expand(x.shape[0], -1, -1), target).solution  # (B, D + 1, D)
    matrix = sol.transpose(1, 2).clone()  # (B, D, D + 1): [A - I | t]
    matrix[:, :, :dims] += torch.eye(dims, dtype=x.dtype, device=x.device)
    return matrix.to(ddf.dtype)


class AffineTransform(nn.Module):
    """Warp an image by an affine matrix; returns ``(warped, ddf)``.

    Forward args:
        image: ``(B, C, *S)``.
        matrix: ``(B, D, D + 1)`` in centred voxel coordinates (see :func:`affine_to_ddf`).
    """

    def __init__(self, mode: str = "bilinear", padding_mode: str = "border") -> None:
        super().__init__()
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, image: torch.Tensor, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ddf = affine_to_ddf(matrix, image.shape[2:])
        return warp(image, ddf, self.mode, self.padding_mode), ddf
