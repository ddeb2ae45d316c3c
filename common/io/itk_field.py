"""DDF <-> ITK displacement field images (for ITK, ANTs and 3D Slicer); affine ``.tfm`` files: :mod:`common.io.itk_affine`.

An ITK displacement field is a vector image on the **fixed** image's grid (same origin, spacing, direction and
size) whose pixel is the physical displacement in **mm with LPS components**: the fixed physical point ``p``
maps to ``p + d(p)`` in the moving image. ``itk.WarpImageFilter`` computes ``out(p) = moving(p + d(p))`` - the
same pull-back as :func:`common.blocks.warp` (``tests/conventions/test_itk_agreement.py`` proves the two
agree).

Axis bookkeeping: ITK's index ``[i, j, k]`` is nibabel's array index ``[i, j, k]``, but ITK's numpy view
(``itk.array_from_image``) is ``[k, j, i]`` - reversed - while its vector components stay in physical order
``(x, y, z)`` (LPS). So relative to the numpy view the components look reversed (what MONAI's
``monai_to_itk_ddf`` handles by flipping components of a field already in ITK's array order). Our DDF has
nibabel array axes and components along them, so the conversion here is: rotate/scale the components into
world axes with the fixed affine (:func:`common.io.convert.voxel_to_physical`, ``lps=True``) and transpose
the spatial axes for ITK. ``monai.data.itk_torch_bridge`` is not used because it expects fields in ITK's
array order.

File types: ``.mha`` is the default recommendation (MetaImage stores LPS geometry and LPS vectors natively; no
convention ambiguity). ``.nrrd`` (Slicer's native format) works the same. ``.nii.gz`` is written by ITK as a
5D ``(X, Y, Z, 1, 3)`` NIfTI with ``intent_code`` 1007 (NIFTI_INTENT_VECTOR) and **LPS vector values** under
a RAS header affine - the ANTs warp-file convention, read correctly by ITK, ANTs and Slicer, but nibabel
users must negate x and y themselves, and tools that expect NIFTI_INTENT_DISPVECT (1006) assume RAS vectors.

3D Slicer: load the field with *Add Data* (choose description "Transform" if it is offered as a volume) or the
``.tfm`` from :func:`common.io.itk_affine.write_itk_affine`. Files hold **resampling** transforms (fixed physical point -> moving
physical point; Slicer's "from parent"). To see the moving image aligned to the fixed one, set the transform
as the parent of the **moving** volume (Data or Transforms module); Slicer inverts it for display as needed,
and *Harden transform* resamples the moving image.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.conventions import check_ddf
from common.io.convert import (
    affine_to_itk_geometry,
    itk_geometry_to_affine,
    physical_to_voxel,
    voxel_to_physical,
)
from common.io.nifti import ImageReadError, atomic_path, gzip_file

__all__ = [
    "array_to_itk_image",
    "itk_image_to_array",
    "ddf_to_itk_field",
    "itk_field_to_ddf",
    "write_itk_displacement",
    "read_itk_displacement",
]

_SLAB_BYTES = 4 << 20  # what the streaming NIfTI writer converts and writes at a time

_FIELD_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".nii.gz", ".nii")


def _itk() -> Any:
    import itk  # imported lazily: `import common.io` stays light

    return itk


def _check_suffix(path: Path, allowed: tuple[str, ...], caller: str) -> None:
    if not any(path.name.lower().endswith(s) for s in allowed):
        raise ValueError(f"{caller}: `path` must end with one of {allowed}, got {path}.")


def _set_geometry(image: Any, affine: np.ndarray, caller: str) -> None:
    itk = _itk()
    origin, spacing, direction = affine_to_itk_geometry(affine, caller=caller)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction, dtype=np.float64)))


def _affine_of(image: Any) -> np.ndarray:
    itk = _itk()
    return itk_geometry_to_affine(
        tuple(image.GetOrigin()), tuple(image.GetSpacing()), itk.array_from_matrix(image.GetDirection())
    )


def array_to_itk_image(array: np.ndarray | torch.Tensor, affine: np.ndarray) -> Any:
    """Scalar image in nibabel array order + RAS affine -> ``itk.Image[itk.F, D]`` with LPS geometry.

    Args:
        array: ``(*S)`` image (a leading ``(1, 1)`` or ``(1,)`` is dropped), D in {2, 3}.
        affine: ``(D + 1, D + 1)`` RAS voxel-to-world affine.
    """
    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in (2, 3):
        raise ValueError(f"array_to_itk_image: `array` must be 2D or 3D, got shape {a.shape}.")
    itk = _itk()
    img = itk.GetImageFromArray(np.ascontiguousarray(a.T, dtype=np.float32))
    _set_geometry(img, np.asarray(affine, dtype=np.float64), "array_to_itk_image")
    return img


def itk_image_to_array(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scalar ITK image -> ``(array in nibabel order, RAS affine)``."""
    itk = _itk()
    return np.ascontiguousarray(itk.array_from_image(image).T), _affine_of(image)


def _as_ddf(ddf: torch.Tensor | np.ndarray, caller: str) -> tuple[torch.Tensor, int]:
    """The checked field on the CPU, its dtype kept (the conversion sums in float64 slab by slab)."""
    t = torch.as_tensor(ddf)
    dims = check_ddf(t, caller=caller)
    if t.shape[0] != 1:
        raise ValueError(f"{caller}: `ddf` must hold one field (batch 1), got shape {tuple(t.shape)}.")
    return t.detach().cpu(), dims


def ddf_to_itk_field(
    ddf: torch.Tensor | np.ndarray, fixed_affine: np.ndarray, moving_affine: np.ndarray | None = None
) -> Any:
    """Voxel DDF -> ITK displacement field image ``itk.Image[itk.Vector[itk.F, D], D]`` (LPS, mm).

    Args:
        ddf: ``(1, D, *S)`` displacement in voxels of the fixed grid, array order, pull-back.
        fixed_affine: ``(D + 1, D + 1)`` RAS affine of the fixed image (nibabel ``img.affine``); gives the
            field's origin, spacing and direction. Must be free of shear.
        moving_affine: RAS affine of the moving image's voxel grid, if it differs from the fixed one.
    """
    caller = "ddf_to_itk_field"
    t, dims = _as_ddf(ddf, caller)
    disp = voxel_to_physical(t, fixed_affine, moving_affine, lps=True)[0].numpy()  # (D, *S), LPS mm
    arr = np.ascontiguousarray(disp.transpose(*range(dims, 0, -1), 0), dtype=np.float32)  # (*S reversed, D)
    itk = _itk()
    field_type = itk.Image[itk.Vector[itk.F, dims], dims]
    field = itk.GetImageFromArray(arr, ttype=field_type)
    _set_geometry(field, np.asarray(fixed_affine, dtype=np.float64), caller)
    return field


def itk_field_to_ddf(field: Any, moving_affine: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """ITK displacement field image (LPS, mm) -> ``(ddf (1, D, *S) float32 voxels, fixed RAS affine)``."""
    itk = _itk()
    dims = int(field.GetImageDimension())
    ncomp = int(field.GetNumberOfComponentsPerPixel())
    if ncomp != dims:
        raise ValueError(f"itk_field_to_ddf: `field` has {ncomp} components per pixel, a {dims}D field needs {dims}.")
    arr = np.asarray(itk.array_from_image(field), dtype=np.float64)  # (*S reversed, D)
    disp = torch.from_numpy(np.ascontiguousarray(arr.transpose(dims, *range(dims - 1, -1, -1))))[None]
    affine = _affine_of(field)
    ddf = physical_to_voxel(disp, affine, moving_affine, lps=True)
    return ddf.to(torch.float32), affine


def write_itk_displacement(
    ddf: torch.Tensor | np.ndarray,
    fixed_affine: np.ndarray,
    path: str | os.PathLike,
    moving_affine: np.ndarray | None = None,
    compresslevel: int | None = None,
) -> Path:
    """Write a voxel DDF as an ITK displacement field file (``.mha`` recommended; ``.nrrd``, ``.nii.gz``).

    The file loads in 3D Slicer as a (resampling) transform and in ITK/ANTs as a displacement field; see the
    module docstring for the file-type trade-offs. Written atomically.

    Args:
        ddf: ``(1, D, *S)`` displacement in fixed-grid voxels, array order, pull-back.
        fixed_affine: RAS affine of the fixed image.
        path: output file.
        moving_affine: RAS affine of the moving image grid, if different from the fixed one.
        compresslevel: for ``.nii.gz``, the gzip level 0-9 (0: stored, several times faster; a displacement field
            compresses by only ~10 %). With a level, a 3D ``.nii``/``.nii.gz`` field is streamed by this module
            (:func:`_write_itk_nifti`: ITK's layout and data bytes, without loading ITK; Python's gzip also lets
            other threads run, which ITK's writer does not). None: ITK's own compressed writer (level 1).
    """
    p = Path(path)
    _check_suffix(p, _FIELD_SUFFIXES, "write_itk_displacement")
    if compresslevel is not None and p.name.lower().endswith((".nii.gz", ".nii")) and torch.as_tensor(ddf).ndim == 5:
        return _write_itk_nifti(ddf, fixed_affine, moving_affine, p, compresslevel)
    field = ddf_to_itk_field(ddf, fixed_affine, moving_affine)
    with atomic_path(p) as tmp:
        if compresslevel is not None and p.name.lower().endswith(".nii.gz"):  # 2D: ITK's bytes, gzip at that level
            raw = tmp.with_name(tmp.name + ".raw.nii")
            try:
                _itk().imwrite(field, str(raw), compression=False)
                gzip_file(raw, tmp, compresslevel)
            finally:
                raw.unlink(missing_ok=True)
        else:
            _itk().imwrite(field, str(tmp), compression=True)
    return p


def _nifti_field_header(fixed_affine: np.ndarray, shape: tuple[int, ...]) -> bytes:
    """The 352 bytes (header + empty extension flag) before a 3D displacement field in the layout ITK's NIfTI writer
    uses: a 5D ``(X, Y, Z, 1, 3)`` float32 image, ``intent_code`` 1007 (vector), qform and sform both "scanner" and
    equal to the fixed image's RAS affine, mm. Made with nibabel, so writing a field does not load ITK (about
    0.3 GB of libraries and 1-2 s at start-up)."""
    import nibabel as nib

    affine = np.asarray(fixed_affine, dtype=np.float64)
    affine_to_itk_geometry(affine, caller="write_itk_displacement")  # the same checks (no shear) as ITK's path
    header = nib.Nifti1Header()
    header.set_data_shape((*shape, 1, 3))
    header.set_data_dtype(np.float32)
    header.set_intent("vector")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm", "sec")
    header["pixdim"][4:] = 0.0
    header["regular"], header["vox_offset"] = b"r", 352
    return header.binaryblock + bytes(4)


def _write_itk_nifti(
    ddf: torch.Tensor | np.ndarray,
    fixed_affine: np.ndarray,
    moving_affine: np.ndarray | None,
    path: Path,
    compresslevel: int,
) -> Path:
    """A 3D field as the file ITK's NIfTI writer makes from :func:`ddf_to_itk_field` (the same data bytes; the header
    holds the same geometry, see :func:`_nifti_field_header`), streamed component by component and slab by slab
    into a gzip stream (``.nii.gz``; ``.nii``: raw), atomically.

    ITK's writer holds the vector image and a second, component-major copy of it (about 0.3 GB at 1 mm with the
    conversion); here one LPS field in mm is held and the data go out in slabs. A NIfTI vector image stores the
    components in its 5th dimension, so component 0 of every voxel comes first, each in Fortran order (x fastest).
    """
    from common.io.nifti import _gzip_writer

    t, _ = _as_ddf(ddf, "write_itk_displacement")
    disp = voxel_to_physical(t, fixed_affine, moving_affine, lps=True)[0].numpy()  # (D, *S), LPS mm
    header = _nifti_field_header(fixed_affine, tuple(int(s) for s in disp.shape[1:]))
    step = max(1, _SLAB_BYTES // max(1, int(np.prod(disp.shape[1:-1])) * 4))  # slabs along the last axis
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with contextlib.ExitStack() as stack:
            out = (
                raw if not path.name.lower().endswith(".gz") else stack.enter_context(_gzip_writer(raw, compresslevel))
            )
            out.write(header)
            for comp in disp:
                for k in range(0, comp.shape[-1], step):
                    out.write(np.ascontiguousarray(comp[..., k : k + step].T, dtype=np.float32).data)
    return path


def read_itk_displacement(
    path: str | os.PathLike, moving_affine: np.ndarray | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """Read an ITK displacement field file -> ``(ddf (1, D, *S) voxels, fixed RAS affine)``.

    Raises:
        ImageReadError: missing or unreadable file, or not a vector image with D components.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: file not found.")
    try:
        field = _itk().imread(str(p))
    except Exception as exc:  # ITK raises RuntimeError with long C++ messages
        raise ImageReadError(f"{p}: not a readable ITK image ({type(exc).__name__}).") from exc
    dims, ncomp = int(field.GetImageDimension()), int(field.GetNumberOfComponentsPerPixel())
    if ncomp != dims:
        raise ImageReadError(f"{p}: expected a {dims}D displacement field with {dims} components, got {ncomp}.")
    ddf, affine = itk_field_to_ddf(field, moving_affine)
    if not torch.isfinite(ddf).all():
        raise ImageReadError(f"{p}: contains NaN/Inf values.")
    return ddf, affine
