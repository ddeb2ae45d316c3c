"""Jacobian of the transformation ``x -> x + u(x)`` from a displacement field (central differences)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from common.conventions import check_ddf

__all__ = ["jacobian_matrix", "jacobian_determinant"]


def jacobian_matrix(ddf: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """``J[b, k, j, ...] = delta_kj + d u_k / d x_j`` with central differences inside, one-sided at edges.

    Args:
        ddf: ``(B, D, *S)`` displacement in voxels.
        spacing: ignored for the determinant of a voxel-unit field (units cancel); kept for API symmetry
            and must be None or ``D`` positive numbers.

    Returns:
        ``(B, D, D, *S)``.
    """
    dims = check_ddf(ddf, caller="jacobian_matrix", finite=False)
    if spacing is not None and (len(spacing) != dims or min(spacing) <= 0):
        raise ValueError(f"jacobian_matrix: `spacing` must be {dims} positive numbers, got {spacing}.")
    grads = []
    for k in range(dims):
        gk = torch.gradient(ddf[:, k], dim=tuple(range(1, dims + 1)))
        grads.append(torch.stack(gk, dim=1))  # (B, D(j), *S)
    jac = torch.stack(grads, dim=1)  # (B, D(k), D(j), *S)
    eye = torch.eye(dims, dtype=ddf.dtype, device=ddf.device).view(1, dims, dims, *([1] * dims))
    return jac + eye


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """``det(I + grad u)`` per voxel, shape ``(B, *S)``; values <= 0 mark folding."""
    jac = jacobian_matrix(ddf)
    return torch.linalg.det(jac.movedim(1, -1).movedim(1, -1))
