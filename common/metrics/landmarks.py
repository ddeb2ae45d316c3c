"""Target registration error (TRE) of landmark pairs under a pull-back displacement field, in mm."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from common.metrics._validation import ddf_array, spacing_tuple, to_numpy

__all__ = ["tre"]


def _points(x: Any, name: str, dims: int) -> np.ndarray:
    arr = to_numpy(x, name, "tre")
    if arr.ndim != 2 or arr.shape[1] != dims:
        raise ValueError(f"tre: `{name}` must have shape (N, {dims}) in voxel coordinates, got shape {arr.shape}.")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"tre: `{name}` contains NaN or Inf values (shape {arr.shape}).")
    return arr


def tre(
    fixed_points_vox: Any,
    moving_points_vox: Any,
    ddf: Any,
    spacing: float | Sequence[float] | None = None,
    *,
    order: int = 1,
) -> np.ndarray:
    """Per-landmark target registration error ``||(x_i + u(x_i) - y_i) * spacing||`` in mm.

    The field lives on the fixed grid and maps a fixed point ``x`` to ``x + u(x)`` in the moving image
    (pull-back convention), so a perfect registration sends each fixed landmark onto its moving partner.
    ``u`` is interpolated at non-integer ``x`` (linear by default). A zero field gives the unregistered
    TRE ``||(x - y) * spacing||``. Fixed and moving grids are assumed to share ``spacing`` (true for the
    Learn2Reg lung/abdomen pairs, which the scorer evaluates with the moving spacing).

    Args:
        fixed_points_vox: ``(N, D)`` landmark positions in voxel coordinates of the fixed grid (array
            order; 0 is the first voxel centre).
        moving_points_vox: ``(N, D)`` corresponding positions in voxel coordinates of the moving grid.
        ddf: displacement in voxels, ``(D, *S)`` or ``(1, D, *S)``, on the fixed grid.
        spacing: voxel size in mm per axis (array order); scalar for isotropic; ``None`` for 1 mm.
        order: spline order of ``scipy.ndimage.map_coordinates`` (1 = linear; the official Learn2Reg
            scorer calls it with its default, 3).

    Returns:
        float64 array ``(N,)`` of distances in mm.

    Raises:
        ValueError: wrong shapes, NaN/Inf, or a fixed landmark outside the field's grid.
    """
    u = ddf_array(ddf, "tre")
    dims, shape = u.shape[0], u.shape[1:]
    x = _points(fixed_points_vox, "fixed_points_vox", dims)
    y = _points(moving_points_vox, "moving_points_vox", dims)
    if x.shape != y.shape:
        raise ValueError(f"tre: `fixed_points_vox` {x.shape} and `moving_points_vox` {y.shape} differ in shape.")
    sp = np.asarray(spacing_tuple(spacing, dims, "tre"))
    upper = np.asarray(shape, dtype=np.float64) - 1.0
    outside = ((x < 0) | (x > upper)).any(axis=1)
    if outside.any():
        raise ValueError(
            f"tre: `fixed_points_vox` has {int(outside.sum())} point(s) outside the field's grid "
            f"{tuple(shape)}, e.g. {x[outside][0].tolist()}."
        )
    if order not in range(6):
        raise ValueError(f"tre: `order` must be an integer in 0..5, got {order!r}.")
    disp = np.stack([ndimage.map_coordinates(u[k], x.T, order=order, mode="nearest") for k in range(dims)], axis=1)
    return np.linalg.norm((x + disp - y) * sp, axis=1)
