"""The one reduction helper shared by every loss in :mod:`common.losses` (``none`` | ``mean`` | ``sum``).

Every loss computes an unreduced tensor (a per-voxel map ``(B, C, *S)``, or per-sample values such as
``(B, C)`` or ``(B, K)``) and hands it to :func:`reduce`, so masking and reduction behave the same
everywhere (the design follows deepali's single reduction helper).
"""

from __future__ import annotations

import math

import torch

__all__ = ["REDUCTIONS", "check_reduction", "reduce"]

REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")


def check_reduction(reduction: str, caller: str) -> str:
    """Return ``reduction`` if it is one of :data:`REDUCTIONS`, else raise ``ValueError`` naming ``caller``."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"{caller}: `reduction` must be one of {REDUCTIONS}, got {reduction!r}.")
    return reduction


def reduce(values: torch.Tensor, reduction: str = "mean", mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce unreduced loss values, optionally weighted by a voxel mask.

    Args:
        values: unreduced loss values, e.g. a per-voxel map ``(B, C, *S)`` or per-sample values ``(B, C)``.
        reduction: ``"none"`` returns ``values`` (times ``mask`` when given, so masked-out entries are 0);
            ``"mean"`` returns the mean, or with ``mask`` the weighted mean
            ``sum(mask * values) / sum(mask)`` where ``mask`` is broadcast to ``values`` (an all-zero mask
            gives 0); ``"sum"`` returns ``sum(mask * values)``.
        mask: optional non-negative weights broadcastable to ``values``, typically ``(B, 1, *S)`` or
            ``(1, 1, *S)`` for a per-voxel map (callers validate its shape and crop it to their domain).

    Returns:
        A scalar for ``"mean"``/``"sum"``, else a tensor of the shape of ``values``.

    Raises:
        ValueError: unknown ``reduction`` or a ``mask`` that does not broadcast to ``values``.
    """
    check_reduction(reduction, "reduce")
    if mask is not None:
        try:
            shape = torch.broadcast_shapes(values.shape, mask.shape)
        except RuntimeError:
            shape = None
        if shape != values.shape:
            raise ValueError(
                f"reduce: `mask` of shape {tuple(mask.shape)} does not broadcast to values of shape "
                f"{tuple(values.shape)}."
            )
        mask = mask.to(values.dtype)
        weighted = values * mask
    else:
        weighted = values
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    if mask is None:
        return total / max(values.numel(), 1)
    # sum of the broadcast mask without materialising it: each mask entry is repeated `factor` times
    factor = math.prod(values.shape) // max(math.prod(mask.shape), 1)
    weight = mask.sum() * factor
    return total / weight.clamp_min(torch.finfo(values.dtype).tiny)
