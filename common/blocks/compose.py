"""Composition of displacement fields under the pull-back convention."""

from __future__ import annotations

import torch

from common.blocks.warp import warp
from common.conventions import check_ddf

__all__ = ["compose_ddf"]


def compose_ddf(first: torch.Tensor, second: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Field equivalent to warping by ``first`` and then warping the result by ``second``.

    With ``w1(x) = m(x + first(x))`` and ``w2(x) = w1(x + second(x))``:
    ``w2(x) = m(x + second(x) + first(x + second(x)))``, so the result is
    ``second + warp(first, second)``. Both fields live on the same grid, in voxels.

    Example: Zhu et al.'s network warps the moving image by the affine field and then by the
    deformable field: ``total = compose_ddf(affine_ddf, deformable_ddf)``.
    """
    check_ddf(first, "first", "compose_ddf")
    check_ddf(second, "second", "compose_ddf")
    if first.shape[1:] != second.shape[1:]:
        raise ValueError(
            f"compose_ddf: fields must share a grid, got `first` shape {tuple(first.shape)} and "
            f"`second` shape {tuple(second.shape)}."
        )
    return second + warp(first, second, padding_mode=padding_mode)
