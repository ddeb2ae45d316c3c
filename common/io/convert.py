"""THE conversion module for displacement fields and affine maps: units, axes and orientation.

Everything that turns a field of :mod:`common.conventions` (voxels of its own grid, array order, pull-back on
the fixed grid) into another convention lives here, so every file writer shares one tested piece of maths.

Coordinate systems used below (``D`` = 2 or 3):

* **voxel** ``x``: index along the array axes (nibabel / MONAI order); a DDF ``u`` maps fixed voxel ``x`` to
  moving voxel ``x + u(x)``.
* **RAS** (nibabel, NIfTI): world point ``p = A x + b`` for a ``(D + 1, D + 1)`` affine ``[[A, b], [0, 1]]``
  (millimetres; +x Right, +y Anterior, +z Superior).
* **LPS** (ITK, DICOM, 3D Slicer files): the same point with x and y negated, ``p_lps = P p_ras`` with
  ``P = diag(-1, -1, 1)`` (``diag(-1, -1)`` in 2D).

A physical displacement field has the fixed grid's array axes as spatial axes and world components
``(x, y[, z])`` in its channel axis: ``d(x) = p_moving(x + u(x)) - p_fixed(x)`` in millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from common.conventions import check_ddf, identity_grid

__all__ = [
    "affine_2d_from_3d",
    "as_affine",
    "centred_affine_to_physical",
    "itk_geometry_to_affine",
    "affine_to_itk_geometry",
    "lps_flip",
    "mm_to_voxel",
    "physical_affine_to_centred",
    "physical_to_voxel",
    "spacing_from_affine",
    "voxel_to_mm",
    "voxel_to_physical",
]

_ORTHO_TOL = 1e-4


def lps_flip(dims: int) -> np.ndarray:
    """``(D, D)`` matrix that maps RAS components to LPS ones (and back): ``diag(-1, -1[, 1])``."""
    if dims not in (2, 3):
        raise ValueError(f"lps_flip: `dims` must be 2 or 3, got {dims}.")
    return np.diag([-1.0, -1.0, 1.0][:dims])


def as_affine(
    affine: np.ndarray | torch.Tensor | Sequence, dims: int, name: str = "affine", caller: str = "as_affine"
) -> np.ndarray:
    """Validate a voxel-to-world affine and return it as a float64 ``(D + 1, D + 1)`` numpy array.

    Raises:
        ValueError: wrong shape (e.g. a 4x4 affine for a 2D field; use :func:`affine_2d_from_3d`), non-finite
            values, a singular linear part or a bottom row other than ``[0, ..., 0, 1]``.
    """
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    try:
        a = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{caller}: `{name}` must be a numeric matrix, got {type(affine).__name__}.") from exc
    if a.shape != (dims + 1, dims + 1):
        hint = " (a 3D grid); for a 2D slice use affine_2d_from_3d()" if a.shape == (4, 4) and dims == 2 else ""
        raise ValueError(f"{caller}: `{name}` must be {dims + 1}x{dims + 1} for a {dims}D field, got {a.shape}{hint}.")
    if not np.isfinite(a).all():
        raise ValueError(f"{caller}: `{name}` contains NaN or Inf values.")
    if not np.allclose(a[dims], np.eye(dims + 1)[dims]):
        raise ValueError(f"{caller}: `{name}` bottom row must be [0, ..., 0, 1], got {a[dims].tolist()}.")
    if abs(np.linalg.det(a[:dims, :dims])) < 1e-12:
        raise ValueError(f"{caller}: `{name}` has a singular linear part (zero spacing?): {a[:dims, :dims].tolist()}.")
    return a


def affine_2d_from_3d(affine: np.ndarray) -> np.ndarray:
    """``3x3`` in-plane affine of a 2D image stored as a single-slice 3D NIfTI (rows/columns x, y and offset).

    This is what ITK keeps when it reads such a file as a 2D image.
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine_2d_from_3d: `affine` must be 4x4, got shape {a.shape}.")
    return a[np.ix_([0, 1, 3], [0, 1, 3])]


def spacing_from_affine(affine: np.ndarray | torch.Tensor | Sequence, dims: int | None = None) -> tuple[float, ...]:
    """Voxel size in mm along each array axis: the column norms of the affine's linear part.

    Args:
        affine: ``(D + 1, D + 1)`` voxel-to-world affine (RAS or LPS give the same spacing).
        dims: spatial dimension; inferred from the affine's shape when None.
    """
    a = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    d = a.shape[0] - 1 if dims is None else dims
    a = as_affine(a, d, caller="spacing_from_affine")
    return tuple(float(v) for v in np.linalg.norm(a[:d, :d], axis=0))


def _spacing_view(spacing: Sequence[float], ddf: torch.Tensor, dims: int, caller: str) -> torch.Tensor:
    sp = [float(s) for s in spacing]
    if len(sp) != dims or min(sp) <= 0 or not np.isfinite(sp).all():
        raise ValueError(f"{caller}: `spacing` must be {dims} positive finite numbers (mm), got {tuple(spacing)}.")
    return torch.tensor(sp, dtype=ddf.dtype, device=ddf.device).view(1, dims, *([1] * dims))


def voxel_to_mm(ddf: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Displacement in voxels -> millimetres along the same array axes (component k times ``spacing[k]``).

    Args:
        ddf: ``(B, D, *S)`` displacement in voxels, array order.
        spacing: ``D`` voxel sizes in mm (e.g. :func:`spacing_from_affine`).

    Returns:
        ``(B, D, *S)`` displacement in mm along the array axes (not rotated into world axes; see
        :func:`voxel_to_physical` for that).
    """
    dims = check_ddf(ddf, caller="voxel_to_mm")
    return ddf * _spacing_view(spacing, ddf, dims, "voxel_to_mm")


def mm_to_voxel(ddf: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`voxel_to_mm`: millimetres along the array axes -> voxels."""
    dims = check_ddf(ddf, caller="mm_to_voxel")
    return ddf / _spacing_view(spacing, ddf, dims, "mm_to_voxel")


def _apply_linear(mat: np.ndarray, field: torch.Tensor) -> torch.Tensor:
    """``out[b, i, ...] = sum_j mat[i, j] field[b, j, ...]`` in float64."""
    m = torch.as_tensor(mat, dtype=torch.float64, device=field.device)
    return torch.einsum("ij,bj...->bi...", m, field.to(torch.float64))


def _apply_linear_slabs(mat: np.ndarray, field: torch.Tensor, slab: int = 32) -> torch.Tensor:
    """:func:`_apply_linear` in the dtype of ``field``: float64 sums over a few planes of the first spatial axis at a
    time (small temporaries), zero entries of ``mat`` skipped (an axis-aligned affine needs one product per
    component)."""
    out = torch.empty_like(field)
    dims = field.shape[1]
    for a in range(0, field.shape[2], slab):
        part = field[:, :, a : a + slab].to(torch.float64)
        for c in range(dims):
            comp = torch.zeros_like(part[:, 0])
            for k in range(dims):
                if mat[c, k] != 0.0:
                    comp += part[:, k] * float(mat[c, k])
            out[:, c, a : a + slab] = comp
    return out


def voxel_to_physical(
    ddf: torch.Tensor,
    fixed_affine: np.ndarray | torch.Tensor,
    moving_affine: np.ndarray | torch.Tensor | None = None,
    lps: bool = False,
) -> torch.Tensor:
    """Voxel DDF -> physical displacement in mm, world components (RAS, or LPS for ITK).

    ``d(x) = M (x + u(x)) - F x`` with ``F``/``M`` the fixed/moving voxel-to-world affines (homogeneous).
    When the moving image shares the fixed grid (the usual case, and what :func:`common.blocks.warp`
    assumes), this is ``A_F u(x)``.

    Args:
        ddf: ``(B, D, *S)`` displacement in fixed-grid voxels, array order, pull-back.
        fixed_affine: ``(D + 1, D + 1)`` RAS voxel-to-world affine of the fixed grid (nibabel ``img.affine``).
        moving_affine: RAS affine of the moving image's voxel grid (default: ``fixed_affine``).
        lps: return LPS components (ITK / Slicer) instead of RAS.

    Returns:
        ``(B, D, *S)`` in mm; spatial axes are the fixed array axes, channel ``i`` is world axis ``i``;
        dtype of ``ddf``.
    """
    dims = check_ddf(ddf, caller="voxel_to_physical")
    f = as_affine(fixed_affine, dims, "fixed_affine", "voxel_to_physical")
    m = f if moving_affine is None else as_affine(moving_affine, dims, "moving_affine", "voxel_to_physical")
    if moving_affine is None:  # shared grid: one linear map per voxel (the LPS flip folded in), slab by slab
        mat = lps_flip(dims) @ f[:dims, :dims] if lps else f[:dims, :dims]
        return _apply_linear_slabs(mat, ddf)
    else:
        grid = identity_grid(ddf.shape[2:], device=ddf.device, dtype=torch.float64)
        y = grid + ddf.to(torch.float64)
        b = torch.as_tensor(m[:dims, dims] - f[:dims, dims], dtype=torch.float64, device=ddf.device)
        d = _apply_linear(m[:dims, :dims], y) - _apply_linear(f[:dims, :dims], grid) + b.view(1, dims, *[1] * dims)
    if lps:
        d = _apply_linear(lps_flip(dims), d)
    return d.to(ddf.dtype)


def physical_to_voxel(
    disp: torch.Tensor,
    fixed_affine: np.ndarray | torch.Tensor,
    moving_affine: np.ndarray | torch.Tensor | None = None,
    lps: bool = False,
) -> torch.Tensor:
    """Inverse of :func:`voxel_to_physical`: ``u(x) = M^-1 (F x + d(x)) - x``.

    Args:
        disp: ``(B, D, *S)`` physical displacement in mm on the fixed grid, world components.
        fixed_affine: RAS affine of the fixed grid.
        moving_affine: RAS affine of the moving voxel grid (default: ``fixed_affine``).
        lps: ``disp`` has LPS components (ITK) rather than RAS.

    Returns:
        ``(B, D, *S)`` displacement in fixed-grid voxels, array order.
    """
    dims = check_ddf(disp, name="disp", caller="physical_to_voxel")
    f = as_affine(fixed_affine, dims, "fixed_affine", "physical_to_voxel")
    m = f if moving_affine is None else as_affine(moving_affine, dims, "moving_affine", "physical_to_voxel")
    d = _apply_linear(lps_flip(dims), disp) if lps else disp.to(torch.float64)
    m_inv = np.linalg.inv(m[:dims, :dims])
    if moving_affine is None:
        u = _apply_linear(m_inv, d)
    else:
        grid = identity_grid(disp.shape[2:], device=disp.device, dtype=torch.float64)
        b = torch.as_tensor(f[:dims, dims] - m[:dims, dims], dtype=torch.float64, device=disp.device)
        world = _apply_linear(f[:dims, :dims], grid) + b.view(1, dims, *[1] * dims) + d
        u = _apply_linear(m_inv, world) - grid
    return u.to(disp.dtype)


def affine_to_itk_geometry(
    affine: np.ndarray | torch.Tensor, dims: int | None = None, caller: str = "affine_to_itk_geometry"
) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    """RAS voxel-to-world affine -> ITK image geometry ``(origin, spacing, direction)`` in LPS.

    ITK's index ``[i, j, k]`` is nibabel's array index ``[i, j, k]`` (ITK's numpy view reverses the axes).

    Raises:
        ValueError: the affine has shear (non-orthogonal columns), which an ITK image cannot represent.
    """
    a = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    d = a.shape[0] - 1 if dims is None else dims
    a = as_affine(a, d, "affine", caller)
    lin = a[:d, :d]
    spacing = np.linalg.norm(lin, axis=0)
    direction_ras = lin / spacing
    if np.abs(direction_ras.T @ direction_ras - np.eye(d)).max() > _ORTHO_TOL:
        raise ValueError(
            f"{caller}: the affine has shear (non-orthogonal axes), which ITK images cannot represent: "
            f"{lin.round(6).tolist()}; resample the image onto an orthogonal grid first."
        )
    p = lps_flip(d)
    origin = p @ a[:d, d]
    return tuple(float(v) for v in origin), tuple(float(v) for v in spacing), p @ direction_ras


def itk_geometry_to_affine(
    origin: Sequence[float], spacing: Sequence[float], direction: np.ndarray | Sequence
) -> np.ndarray:
    """ITK (LPS) origin, spacing and direction -> RAS voxel-to-world affine ``(D + 1, D + 1)``."""
    o = np.asarray(origin, dtype=np.float64)
    d = o.shape[0]
    p = lps_flip(d)
    out = np.eye(d + 1)
    out[:d, :d] = p @ np.asarray(direction, dtype=np.float64).reshape(d, d) @ np.diag(np.asarray(spacing, float))
    out[:d, d] = p @ o
    return out


def _centred_voxel_matrix(matrix: torch.Tensor | np.ndarray, shape: Sequence[int], caller: str) -> np.ndarray:
    """Project convention ``[A | t]`` (centred voxel coordinates) -> homogeneous voxel-to-voxel matrix."""
    m = np.asarray(matrix.detach().cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2 or m.shape[0] not in (2, 3) or m.shape[1] != m.shape[0] + 1:
        raise ValueError(
            f"{caller}: `matrix` must have shape (1, D, D + 1) or (D, D + 1) with D in (2, 3), got {m.shape}."
        )
    if not np.isfinite(m).all():
        raise ValueError(f"{caller}: `matrix` contains NaN or Inf values.")
    dims = m.shape[0]
    if len(shape) != dims or min(int(s) for s in shape) < 1:
        raise ValueError(f"{caller}: `shape` must be {dims} positive sizes of the fixed grid, got {tuple(shape)}.")
    c = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    a = m[:, :dims]
    v = np.eye(dims + 1)
    v[:dims, :dims] = a
    v[:dims, dims] = c + m[:, dims] - a @ c
    return v


def centred_affine_to_physical(
    matrix: torch.Tensor | np.ndarray,
    shape: Sequence[int],
    fixed_affine: np.ndarray | torch.Tensor,
    moving_affine: np.ndarray | torch.Tensor | None = None,
    lps: bool = True,
) -> np.ndarray:
    """Project affine ``[A | t]`` (see :func:`common.blocks.affine_to_ddf`) -> physical fixed-to-moving map.

    The project's matrix maps fixed voxel ``x`` to moving voxel ``y = A (x - c) + c + t`` with
    ``c = (shape - 1) / 2``. The returned homogeneous matrix ``T`` maps a fixed **physical** point to the
    moving physical point it samples, ``T = M V F^-1`` (``V`` the voxel map), which is exactly the meaning of
    an ITK transform used by ``ResampleImageFilter`` (3D Slicer: a "resampling" / "from parent" transform).

    Args:
        matrix: ``(1, D, D + 1)`` or ``(D, D + 1)``, ``t`` in voxels.
        shape: fixed grid spatial shape ``S`` (defines ``c``).
        fixed_affine: RAS affine of the fixed image.
        moving_affine: RAS affine of the moving image (default: ``fixed_affine``).
        lps: return the map in LPS coordinates (ITK) rather than RAS.

    Returns:
        ``(D + 1, D + 1)`` float64 homogeneous matrix (mm).
    """
    caller = "centred_affine_to_physical"
    v = _centred_voxel_matrix(matrix, shape, caller)
    dims = v.shape[0] - 1
    f = as_affine(fixed_affine, dims, "fixed_affine", caller)
    m = f if moving_affine is None else as_affine(moving_affine, dims, "moving_affine", caller)
    t = m @ v @ np.linalg.inv(f)
    if lps:
        p = np.eye(dims + 1)
        p[:dims, :dims] = lps_flip(dims)
        t = p @ t @ p
    return t


def physical_affine_to_centred(
    transform: np.ndarray,
    shape: Sequence[int],
    fixed_affine: np.ndarray | torch.Tensor,
    moving_affine: np.ndarray | torch.Tensor | None = None,
    lps: bool = True,
) -> torch.Tensor:
    """Inverse of :func:`centred_affine_to_physical`: the project matrix ``(1, D, D + 1)``, float64."""
    caller = "physical_affine_to_centred"
    t = np.asarray(transform, dtype=np.float64)
    dims = t.shape[0] - 1
    if t.shape != (dims + 1, dims + 1) or dims not in (2, 3):
        raise ValueError(f"{caller}: `transform` must be 3x3 or 4x4 homogeneous, got shape {t.shape}.")
    if len(shape) != dims:
        raise ValueError(f"{caller}: `shape` must have {dims} entries, got {tuple(shape)}.")
    f = as_affine(fixed_affine, dims, "fixed_affine", caller)
    m = f if moving_affine is None else as_affine(moving_affine, dims, "moving_affine", caller)
    if lps:
        p = np.eye(dims + 1)
        p[:dims, :dims] = lps_flip(dims)
        t = p @ t @ p
    v = np.linalg.inv(m) @ t @ f
    c = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    a = v[:dims, :dims]
    out = np.concatenate([a, (v[:dims, dims] - c + a @ c)[:, None]], axis=1)
    return torch.as_tensor(out, dtype=torch.float64).unsqueeze(0)
