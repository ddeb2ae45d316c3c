"""Private input checks and conversions shared by the metric modules.

Metrics compute in NumPy (float64 for fields), whatever the caller passes: ``numpy.ndarray`` or
``torch.Tensor`` (detached and moved to the CPU). Errors name the public callable and the argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from common.conventions import check_ddf

__all__: list[str] = []


def to_numpy(x: Any, name: str, caller: str) -> np.ndarray:
    """``numpy.ndarray`` or ``torch.Tensor`` -> ``numpy.ndarray`` (no copy for NumPy input)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{caller}: `{name}` must be a numpy.ndarray or torch.Tensor, got {type(x).__name__}.")


def label_array(x: Any, name: str, caller: str) -> np.ndarray:
    """Validate an integer-valued label map (any shape) and return it as an int64 array."""
    arr = to_numpy(x, name, caller)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{caller}: `{name}` must hold integer labels, got dtype {arr.dtype}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{caller}: `{name}` contains NaN or Inf values (shape {arr.shape}).")
    rounded = np.rint(arr)
    if not np.array_equal(rounded, arr):
        raise ValueError(
            f"{caller}: `{name}` holds non-integer values (shape {arr.shape}); "
            "label maps must be warped with nearest-neighbour interpolation or argmax."
        )
    return rounded.astype(np.int64)


def squeeze_leading(arr: np.ndarray, ndim: int, name: str, caller: str) -> np.ndarray:
    """Drop leading singleton axes (batch, channel) until ``arr.ndim == ndim``."""
    while arr.ndim > ndim and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != ndim:
        raise ValueError(
            f"{caller}: `{name}` must be a {ndim}D map of shape (*S) (leading singleton axes allowed), "
            f"got shape {arr.shape}."
        )
    return arr


def same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str, caller: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{caller}: shapes differ: `{name_a}` {a.shape} vs `{name_b}` {b.shape}.")


def ddf_array(ddf: Any, caller: str, name: str = "ddf", float64: bool = True) -> np.ndarray:
    """A single displacement field ``(D, *S)`` or ``(1, D, *S)`` in voxels -> float64 ``(D, *S)``.

    Validated with :func:`common.conventions.check_ddf` (rank, channel count, finite values). ``float64=False``
    keeps a float32 field as it is (no 1 mm-sized float64 copy; for callers that convert slab by slab).
    """
    arr = to_numpy(ddf, name, caller)
    # (D, *S) for 2D is rank 3; rank 4 is (1, 2, H, W) when it starts with 1, else (3, H, W, Z)
    if arr.ndim == 3 or (arr.ndim == 4 and arr.shape[0] != 1):
        arr = arr[None]
    if arr.ndim == 5 and arr.shape[0] != 1:
        raise ValueError(
            f"{caller}: `{name}` must hold a single field, shape (D, *S) or (1, D, *S), "
            f"got shape {arr.shape}; loop over the batch."
        )
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{caller}: `{name}` must be a real-valued field, got dtype {arr.dtype}.")
    keep = not float64 and arr.dtype in (np.float32, np.float64)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=arr.dtype if keep else np.float64))
    check_ddf(t, name=name, caller=caller)
    return t[0].numpy()


def spacing_tuple(spacing: float | Sequence[float] | None, dims: int, caller: str) -> tuple[float, ...]:
    """``None`` -> ones; a scalar -> isotropic; else ``dims`` positive finite numbers (mm)."""
    if spacing is None:
        return (1.0,) * dims
    if isinstance(spacing, int | float | np.floating | np.integer):
        values = (float(spacing),) * dims
    else:
        values = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).ravel())
    if len(values) != dims or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{caller}: `spacing` must be {dims} positive numbers in mm, got {spacing!r}.")
    return values


def mask_array(mask: Any, shape: tuple[int, ...], caller: str, name: str = "mask") -> np.ndarray:
    """``None`` -> all True; else a boolean map of ``shape`` (leading singleton axes allowed)."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    arr = squeeze_leading(to_numpy(mask, name, caller), len(shape), name, caller)
    if arr.shape != shape:
        raise ValueError(f"{caller}: `{name}` has shape {arr.shape} but the field's grid is {shape}.")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{caller}: `{name}` contains NaN or Inf values.")
    out = arr > 0
    if not out.any():
        raise ValueError(f"{caller}: `{name}` is empty (no voxel > 0).")
    return out


def scored_labels(
    pred: np.ndarray, ref: np.ndarray, presence: np.ndarray, labels: Sequence[int] | None
) -> tuple[list[int], list[int]]:
    """Learn2Reg label selection shared by the overlap and surface metrics: ``(scored, skipped)`` codes.

    Candidates are ``labels`` or every non-zero code in ``pred`` or ``ref``; a code is skipped when it is absent
    from ``ref`` or from ``presence`` (the unwarped moving labels when given, else ``pred``).
    """
    if labels is None:
        codes = sorted(int(c) for c in np.union1d(np.unique(pred), np.unique(ref)) if c != 0)
    else:
        codes = [int(c) for c in labels]
    in_ref = set(int(c) for c in np.unique(ref))
    in_other = set(int(c) for c in np.unique(presence))
    scored = [c for c in codes if c in in_ref and c in in_other]
    return scored, [c for c in codes if c not in scored]
