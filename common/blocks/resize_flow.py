"""Resizing displacement fields while preserving physical displacement (vectors are rescaled)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.conventions import ALIGN_CORNERS, check_ddf, resize_scale_factors

__all__ = ["resize_flow", "ResizeFlow"]


def resize_flow(ddf: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a displacement field onto a grid of ``size`` voxels and rescale its vectors.

    Both grids span the same physical extent with corner voxel centres aligned (``align_corners=True``),
    so a field resized from ``n`` to ``m`` voxels along axis k has component k multiplied by
    ``(m - 1) / (n - 1)`` (about 2 for a half-resolution flow brought back to full size).

    Note:
        MONAI's ``VoxelMorph(half_res=True)`` upsamples its half-resolution flow without this factor
        (``tests/conventions/test_half_resolution.py`` pins our behaviour).

    Args:
        ddf: ``(B, D, *S)`` displacement in voxels of ``S``.
        size: target spatial size, ``D`` integers.

    Returns:
        ``(B, D, *size)`` displacement in voxels of ``size``.
    """
    dims = check_ddf(ddf, caller="resize_flow", finite=False)
    size = tuple(int(s) for s in size)
    if len(size) != dims:
        raise ValueError(
            f"resize_flow: `size` {size} must have {dims} entries for a field of shape {tuple(ddf.shape)}."
        )
    if tuple(ddf.shape[2:]) == size:
        return ddf
    mode = "bilinear" if dims == 2 else "trilinear"
    out = F.interpolate(ddf, size=size, mode=mode, align_corners=ALIGN_CORNERS)
    scale = resize_scale_factors(ddf.shape[2:], size)
    s = torch.tensor(scale, dtype=out.dtype, device=out.device).view(1, dims, *([1] * dims))
    return out * s


class ResizeFlow(nn.Module):
    """Module form of :func:`resize_flow`; ``size`` may be given per call."""

    def __init__(self, size: Sequence[int] | None = None) -> None:
        super().__init__()
        self.size = None if size is None else tuple(size)

    def forward(self, ddf: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        target = size if size is not None else self.size
        if target is None:
            raise ValueError("ResizeFlow: no target size given at construction or call.")
        return resize_flow(ddf, target)
