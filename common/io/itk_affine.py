"""Affine transform files for ITK, ANTs and 3D Slicer (``.tfm``/``.txt``/``.mat``/``.h5``).

A file holds the **resampling** transform: fixed physical point (LPS) -> moving physical point, the convention of
:mod:`common.io.itk_field` (whose docstring says how to use it in 3D Slicer).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io.convert import (
    centred_affine_to_physical,
    lps_flip,
    physical_affine_to_centred,
)
from common.io.itk_field import _check_suffix, _itk
from common.io.nifti import ImageReadError, atomic_path

__all__ = ["centred_affine_to_itk", "write_itk_affine", "read_itk_affine"]

_TRANSFORM_SUFFIXES = (".tfm", ".txt", ".mat", ".h5", ".hdf5")


def _itk_affine_parameters(
    matrix: torch.Tensor | np.ndarray,
    fixed_affine: np.ndarray,
    moving_affine: np.ndarray | None,
    shape: Sequence[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITK ``AffineTransform`` parameters ``(matrix, translation, centre)`` in LPS, about the fixed centre."""
    t = centred_affine_to_physical(matrix, shape, fixed_affine, moving_affine, lps=True)
    dims = t.shape[0] - 1
    centre_vox = np.append((np.asarray(shape, dtype=np.float64) - 1.0) / 2.0, 1.0)
    centre = lps_flip(dims) @ (np.asarray(fixed_affine, dtype=np.float64) @ centre_vox)[:dims]
    mat = t[:dims, :dims]
    return mat, mat @ centre + t[:dims, dims] - centre, centre


def centred_affine_to_itk(
    matrix: torch.Tensor | np.ndarray,
    fixed_affine: np.ndarray,
    moving_affine: np.ndarray | None,
    shape: Sequence[int],
) -> Any:
    """Project affine ``[A | t]`` (centred fixed voxel -> moving voxel) -> ``itk.AffineTransform[itk.D, D]``.

    The transform maps fixed physical (LPS) points to moving physical points, so
    ``itk.ResampleImageFilter(moving, transform, output grid = fixed)`` reproduces
    :class:`common.blocks.AffineTransform`. Its centre is the fixed grid centre.
    """
    mat, translation, centre = _itk_affine_parameters(matrix, fixed_affine, moving_affine, shape)
    itk = _itk()
    tr = itk.AffineTransform[itk.D, mat.shape[0]].New()
    tr.SetCenter([float(v) for v in centre])
    tr.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(mat)))
    tr.SetTranslation([float(v) for v in translation])
    return tr


def _tfm_text(mat: np.ndarray, translation: np.ndarray, centre: np.ndarray) -> str:
    """ITK's "Insight Transform File V1.0" text for one ``AffineTransform_double_D_D`` (full precision)."""
    dims = mat.shape[0]
    params = " ".join(repr(float(v)) for v in (*mat.ravel(), *translation))
    fixed = " ".join(repr(float(v)) for v in centre)
    return (
        "#Insight Transform File V1.0\n#Transform 0\n"
        f"Transform: AffineTransform_double_{dims}_{dims}\nParameters: {params}\nFixedParameters: {fixed}\n"
    )


def _parse_tfm(text: str) -> np.ndarray | None:
    """Homogeneous LPS matrix of a text file holding one affine transform; None if it holds anything else."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields.setdefault(key.strip(), []).append(value.strip())
    kinds = fields.get("Transform", [])
    if len(kinds) != 1 or len(fields.get("Parameters", [])) != 1 or len(fields.get("FixedParameters", [])) != 1:
        return None
    name, _, rest = kinds[0].partition("_")
    if name not in ("AffineTransform", "MatrixOffsetTransformBase") or rest not in (
        "double_2_2",
        "double_3_3",
        "float_2_2",
        "float_3_3",
    ):
        return None
    dims = int(rest[-1])
    try:
        params = np.array(fields["Parameters"][0].split(), dtype=np.float64)
        centre = np.array(fields["FixedParameters"][0].split(), dtype=np.float64)
    except ValueError:
        return None
    if params.size != dims * (dims + 1) or centre.size != dims:
        return None
    mat, translation = params[: dims * dims].reshape(dims, dims), params[dims * dims :]
    out = np.eye(dims + 1)
    out[:dims, :dims] = mat
    out[:dims, dims] = translation + centre - mat @ centre  # T(p) = M (p - c) + c + t
    return out


def write_itk_affine(
    matrix: torch.Tensor | np.ndarray,
    fixed_affine: np.ndarray,
    moving_affine: np.ndarray | None,
    path: str | os.PathLike,
    *,
    shape: Sequence[int],
) -> Path:
    """Write the project's affine as an ITK transform file (``.tfm``/``.txt``; ``.mat``/``.h5`` also work).

    ``.tfm``/``.txt`` are written directly in ITK's documented text format ("Insight Transform File V1.0",
    ``AffineTransform_double_D_D``, full float precision): ``itk.transformwrite`` produces the same text, but
    loading ITK's transform I/O modules takes 5-20 s per process, far longer than the write. ``.mat``/``.h5``
    go through ``itk.transformwrite``. The tests read the files back with ``itk.transformread``.

    Args:
        matrix: ``(1, D, D + 1)`` or ``(D, D + 1)`` in the centred voxel coordinates of
            :mod:`common.blocks.affine`: fixed voxel ``x`` -> moving voxel ``A (x - c) + c + t`` with
            ``c = (shape - 1) / 2`` and ``t`` in voxels.
        fixed_affine: RAS affine of the fixed image.
        moving_affine: RAS affine of the moving image (None: same grid as the fixed image).
        path: output file, written atomically.
        shape: fixed image spatial shape (defines the centre ``c``).

    Returns:
        The written path. The file is an ITK resampling transform (fixed physical -> moving physical, LPS mm);
        in Slicer apply it to the moving volume (see the module docstring).
    """
    p = Path(path)
    _check_suffix(p, _TRANSFORM_SUFFIXES, "write_itk_affine")
    mat, translation, centre = _itk_affine_parameters(matrix, fixed_affine, moving_affine, shape)
    with atomic_path(p) as tmp:
        if p.name.lower().endswith((".tfm", ".txt")):
            tmp.write_text(_tfm_text(mat, translation, centre))
        else:
            _itk().transformwrite([centred_affine_to_itk(matrix, fixed_affine, moving_affine, shape)], str(tmp))
    return p


def read_itk_affine(
    path: str | os.PathLike,
    fixed_affine: np.ndarray,
    moving_affine: np.ndarray | None,
    *,
    shape: Sequence[int],
) -> torch.Tensor:
    """Read an ITK affine transform file -> project matrix ``(1, D, D + 1)`` float64.

    Text files holding one ``AffineTransform`` are parsed directly (fast); anything else (rigid, similarity,
    ``.mat``, ``.h5``) goes through ``itk.transformread`` and must be a matrix-offset transform.

    Raises:
        ImageReadError: missing or unreadable file, several transforms, or a non-affine transform.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: file not found.")
    t = None
    if p.name.lower().endswith((".tfm", ".txt")):
        try:
            t = _parse_tfm(p.read_text(errors="replace"))
        except OSError as exc:
            raise ImageReadError(f"{p}: cannot read ({exc}).") from exc
    if t is None:
        t = _read_with_itk(p)
    if len(shape) != t.shape[0] - 1:
        raise ValueError(
            f"read_itk_affine: `shape` {tuple(shape)} does not fit the {t.shape[0] - 1}D transform in {p}."
        )
    return physical_affine_to_centred(t, shape, fixed_affine, moving_affine, lps=True)


def _read_with_itk(p: Path) -> np.ndarray:
    itk = _itk()
    try:
        transforms = itk.transformread(str(p))
    except Exception as exc:
        raise ImageReadError(f"{p}: not a readable ITK transform file ({type(exc).__name__}).") from exc
    if len(transforms) != 1:
        raise ImageReadError(f"{p}: expected one transform, found {len(transforms)}.")
    tr = transforms[0]
    if not hasattr(tr, "GetMatrix") or not hasattr(tr, "GetOffset"):
        raise ImageReadError(f"{p}: {tr.GetNameOfClass()} is not a matrix-offset (affine) transform.")
    mat = np.asarray(itk.array_from_matrix(tr.GetMatrix()), dtype=np.float64)
    dims = mat.shape[0]
    t = np.eye(dims + 1)
    t[:dims, :dims] = mat
    t[:dims, dims] = np.asarray(tuple(tr.GetOffset()), dtype=np.float64)
    return t
