"""Input validation shared by the losses: readable ``ValueError``/``TypeError`` that name the loss and shapes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_pair", "check_mask", "check_finite", "check_spacing", "crop_interior"]


def _shape(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}"


def check_finite(x: torch.Tensor, name: str, caller: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{caller}: `{name}` contains NaN or Inf values ({_shape(x)}).")


def check_mask(mask: torch.Tensor | None, reference: torch.Tensor, caller: str) -> torch.Tensor | None:
    """Validate a voxel-weight mask ``(B, 1, *S)`` or ``(1, 1, *S)`` against ``reference`` ``(B, C, *S)``.

    Returns the mask cast to the reference's dtype (None stays None).
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{caller}: `mask` must be a torch.Tensor or None, got {type(mask).__name__}.")
    if (
        mask.ndim != reference.ndim
        or mask.shape[1] != 1
        or mask.shape[2:] != reference.shape[2:]
        or mask.shape[0] not in (1, reference.shape[0])
    ):
        want = (reference.shape[0], 1, *reference.shape[2:])
        raise ValueError(
            f"{caller}: `mask` must have shape {want} (or batch 1) to weight inputs of {_shape(reference)}, "
            f"got {_shape(mask)}."
        )
    check_finite(mask, "mask", caller)
    if mask.numel() and mask.min() < 0:
        raise ValueError(f"{caller}: `mask` holds negative weights ({_shape(mask)}); weights must be >= 0.")
    return mask.to(reference.dtype)


def check_pair(
    pred: torch.Tensor,
    target: torch.Tensor,
    caller: str,
    mask: torch.Tensor | None = None,
    channels: int | None = None,
    min_size: int = 1,
    names: tuple[str, str] = ("pred", "target"),
) -> int:
    """Validate two tensors ``(B, C, *S)`` with 2 or 3 spatial dims and identical shapes; return ``len(S)``.

    Args:
        pred: first input.
        target: second input.
        caller: class name used to prefix error messages.
        mask: optional voxel weights, validated by :func:`check_mask`.
        channels: required channel count ``C`` (None: any).
        min_size: minimum size of every spatial axis.
        names: argument names used in error messages.

    Raises:
        TypeError: an input is not a floating-point tensor.
        ValueError: rank, shape, channel count, spatial size, NaN/Inf or mask problems.
    """
    for x, name in zip((pred, target), names):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{caller}: `{name}` must be a torch.Tensor, got {type(x).__name__}.")
        if not x.is_floating_point():
            raise TypeError(
                f"{caller}: `{name}` must be a floating-point tensor, got dtype {x.dtype} ({_shape(x)}); "
                "convert label maps with common.blocks.one_hot first."
            )
        if x.ndim not in (4, 5):
            raise ValueError(
                f"{caller}: `{name}` must have shape (B, C, *S) with 2 or 3 spatial dims, got {_shape(x)}."
            )
    if pred.shape != target.shape:
        raise ValueError(f"{caller}: shape mismatch: `{names[0]}` {_shape(pred)} vs `{names[1]}` {_shape(target)}.")
    if channels is not None and pred.shape[1] != channels:
        raise ValueError(
            f"{caller}: expected {channels} channel(s), got `{names[0]}` {_shape(pred)} and "
            f"`{names[1]}` {_shape(target)}."
        )
    if min(pred.shape[2:]) < min_size:
        raise ValueError(f"{caller}: every spatial axis needs at least {min_size} voxels, got {_shape(pred)}.")
    check_finite(pred, names[0], caller)
    check_finite(target, names[1], caller)
    check_mask(mask, pred, caller)
    return pred.ndim - 2


def check_spacing(spacing: Sequence[float] | None, dims: int, caller: str) -> tuple[float, ...]:
    """Return ``spacing`` (mm per voxel, array order) as ``dims`` positive floats; None means 1 mm."""
    if spacing is None:
        return (1.0,) * dims
    values = tuple(float(s) for s in spacing)
    if len(values) != dims or min(values) <= 0:
        raise ValueError(f"{caller}: `spacing` must be {dims} positive numbers (mm, array order), got {spacing}.")
    return values


def crop_interior(x: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    """Slice every spatial axis of ``(B, C, *S)`` to ``[start : n - stop]`` (None stays None)."""
    if x is None:
        return None
    index = (slice(None), slice(None)) + tuple(slice(start, n - stop) for n in x.shape[2:])
    return x[index]
