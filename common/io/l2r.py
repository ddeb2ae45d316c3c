"""Learn2Reg displacement files: write a DDF the way the challenge scorers read it, and read such files back.

Facts this module relies on (read from the public Learn2Reg / LUMIR evaluation code, 2021-2024):

* Current format (Learn2Reg 2022+, LUMIR 2024): ``disp_<fixed>_<moving>.nii.gz`` with ``<fixed>``/``<moving>``
  the 4-character case ids cut from the image names (``name[-16:-12]`` of ``LUMIRMRI_3455_0000.nii.gz``),
  loaded with ``nib.load(f).get_fdata()`` (float32; NIfTI-1 has no float16 type). Shape ``(*S, D)``
  channels-last, **voxels of the fixed grid, array order, pull-back**: the scorer warps with
  ``map_coordinates(moving, identity + disp.transpose(3, 0, 1, 2), order=0)`` - the convention of
  :mod:`common.conventions`, so only the channel axis moves. The NIfTI affine is not used by the scorer.
  The LUMIR scorer also accepts ``.npz`` (``arr_0``) and transposes channels-first ``(3, *S)`` arrays.
* Learn2Reg 2021 task 3 (OASIS): ``disp_XXXX_XXXX.npz`` with ``arr_0`` of shape ``(3, 80, 96, 112)``, dtype
  **float16** (checked), channels-first, at **half resolution but in full-resolution voxel units**. The scorer
  does ``disp = np.array([zoom(disp[i], 2, order=2) for i in range(3)])`` (scipy, quadratic spline,
  corner-aligned grid, values **not** rescaled) and then warps the 160x192x224 labels with
  ``identity + disp``. :func:`read_l2r_displacement` with ``full_shape`` replays exactly that upsampling.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from common.conventions import ALIGN_CORNERS, check_ddf
from common.io.convert import as_affine
from common.io.files import image_stem
from common.io.nifti import ImageReadError, atomic_path, save_image

__all__ = [
    "l2r_case_id",
    "l2r_disp_name",
    "write_l2r_displacement",
    "read_l2r_displacement",
    "collect_submission",
]

_SUFFIXES = (".nii.gz", ".nii", ".npz")
_CASE_RE = re.compile(r"^(?:.*_)?(\d{4})_\d{4}\.nii\.gz$")
_F16_MAX = float(np.finfo(np.float16).max)


def _suffix(path: Path, caller: str) -> str:
    name = path.name.lower()
    for s in _SUFFIXES:
        if name.endswith(s):
            return s
    raise ValueError(f"{caller}: `path` must end with .nii.gz, .nii or .npz, got {path}.")


def l2r_disp_name(fixed_id: int | str, moving_id: int | str, ext: str = ".nii.gz") -> str:
    """Learn2Reg / LUMIR submission file name ``disp_<fixed>_<moving><ext>``.

    Integer ids are zero-padded to 4 digits (``3455`` -> ``"3455"``, ``7`` -> ``"0007"``), as the scorers
    cut them from ``..._XXXX_0000.nii.gz`` image names; string ids are used as given.
    """
    parts = []
    for name, v in (("fixed_id", fixed_id), ("moving_id", moving_id)):
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            if v < 0:
                raise ValueError(f"l2r_disp_name: `{name}` must be non-negative, got {v}.")
            parts.append(f"{int(v):04d}")
        elif isinstance(v, str) and v and not any(c in v for c in "/\\ ") and v not in (".", ".."):
            parts.append(v)
        else:
            raise ValueError(
                f"l2r_disp_name: `{name}` must be an int or a non-empty id without spaces/slashes, got {v!r}."
            )
    if ext not in _SUFFIXES:
        raise ValueError(f"l2r_disp_name: `ext` must be one of {_SUFFIXES}, got {ext!r}.")
    return f"disp_{parts[0]}_{parts[1]}{ext}"


def write_l2r_displacement(
    ddf: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    affine: np.ndarray | None = None,
    half_resolution: bool = False,
    dtype: type | None = None,
    compresslevel: int | None = None,
) -> Path:
    """Write a DDF as a Learn2Reg displacement file (atomic: temp file + rename).

    ``.nii.gz``/``.nii``: channels-last ``(*S, D)`` NIfTI (current Learn2Reg/LUMIR format).
    ``.npz``: channels-first ``(D, *S)`` array under ``arr_0`` (Learn2Reg 2021 format).

    Args:
        ddf: ``(1, D, *S)`` (or ``(D, *S)``) displacement in voxels of the full-resolution fixed grid ``S``,
            array order, pull-back (:mod:`common.conventions`); torch or numpy.
        path: output file; the suffix picks the format (use :func:`l2r_disp_name` for the file name).
        affine: 4x4 RAS affine of the fixed image, stored in the NIfTI header (scorers ignore it); default
            identity.
        half_resolution: store the field on the half-size grid ``S // 2`` (Learn2Reg 2021 OASIS: 3x80x96x112)
            sampled corner-aligned (``align_corners=True``, the grid scipy's ``zoom`` uses), **keeping
            full-resolution voxel units** (no rescaling), as the scorer upsamples x2 without rescaling. All
            sizes of ``S`` must be even. A half-resolution network flow in half-resolution voxels must first
            be brought to full size with :func:`common.blocks.resize_flow` (which rescales it).
        dtype: stored dtype. None (default): float16 for ``.npz`` (the 2021 task required it), float32 for
            NIfTI. NIfTI-1 has no 16-bit float type (nibabel refuses it): float16 is only valid for ``.npz``.
        compresslevel: gzip level 0-9 of a ``.nii.gz`` (None: nibabel's default, 1); see
            :func:`common.io.nifti.write_nifti`.

    Returns:
        The written path.

    Raises:
        ValueError: bad shape, batch > 1, NaN/Inf, odd size with ``half_resolution``, float16 overflow, bad
            suffix.
    """
    caller = "write_l2r_displacement"
    p = Path(path)
    suffix = _suffix(p, caller)
    t = torch.as_tensor(ddf)
    if t.ndim in (3, 4) and t.shape[0] == t.ndim - 1:
        t = t.unsqueeze(0)
    dims = check_ddf(t, caller=caller)
    if t.shape[0] != 1:
        raise ValueError(
            f"{caller}: `ddf` must hold one pair (batch 1), got shape {tuple(t.shape)}; one file per pair."
        )
    # float64 only for the half-resolution interpolation (float32 -> float64 -> float32 is exact: skipped otherwise)
    t = t.detach().to("cpu", torch.float64 if half_resolution or t.dtype == torch.float64 else torch.float32)
    aff = np.eye(4) if affine is None else as_affine(affine, 3, "affine", caller)  # NIfTI affines are 4x4
    if half_resolution:
        t, aff = _to_half_resolution(t, aff, dims, tuple(ddf.shape), caller)
    arr = t[0].numpy()  # (D, *S)
    out_dtype = _stored_dtype(dtype, suffix, p, caller)
    if out_dtype == np.float16 and np.abs(arr).max(initial=0.0) > _F16_MAX:
        raise ValueError(f"{caller}: `ddf` has |values| up to {np.abs(arr).max():.3g} voxels, beyond float16's range.")
    arr = arr.astype(out_dtype)
    if suffix == ".npz":
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, arr_0=arr)
        return p
    img = nib.Nifti1Image(np.moveaxis(arr, 0, -1), aff)
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(out_dtype)
    save_image(img, p, compresslevel)
    return p


def _to_half_resolution(t: torch.Tensor, aff: np.ndarray, dims: int, given: tuple, caller: str):
    """The field on the half-size grid, corner-aligned, values kept in full-resolution voxels; its affine."""
    shape = tuple(int(s) for s in t.shape[2:])
    if any(s % 2 for s in shape):
        raise ValueError(f"{caller}: `half_resolution` needs even sizes, got `ddf` shape {given}.")
    half = tuple(s // 2 for s in shape)
    mode = "bilinear" if dims == 2 else "trilinear"
    t = F.interpolate(t, size=half, mode=mode, align_corners=ALIGN_CORNERS)  # values stay full-res voxels
    # half-grid voxel i sits at full-grid voxel i * (n - 1) / (m - 1)
    scale = np.ones(aff.shape[0])
    scale[:dims] = [(n - 1) / (m - 1) if m > 1 else 1.0 for n, m in zip(shape, half)]
    return t, aff @ np.diag(scale)


def _stored_dtype(dtype: type | None, suffix: str, p: Path, caller: str) -> np.dtype:
    """float16 for ``.npz`` and float32 for NIfTI by default; float16 only in ``.npz``."""
    if dtype is None:
        return np.dtype(np.float16 if suffix == ".npz" else np.float32)
    out_dtype = np.dtype(dtype)
    if out_dtype == np.float16 and suffix != ".npz":
        raise ValueError(f"{caller}: `dtype` float16 needs a .npz path (NIfTI-1 has no float16), got {p}.")
    if out_dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{caller}: `dtype` must be float16, float32 or float64, got {out_dtype}.")
    return out_dtype


def read_l2r_displacement(
    path: str | os.PathLike, full_shape: Sequence[int] | None = None, upsample_order: int = 2
) -> torch.Tensor:
    """Read a Learn2Reg displacement file into the project convention.

    Accepts ``.nii``/``.nii.gz`` (channels-last ``(*S, D)``, the shape the scorers check) and ``.npz``
    (``arr_0``; channels-first ``(D, *S)`` as in 2021, or channels-last).

    Args:
        path: displacement file.
        full_shape: fixed image shape. If the stored field is smaller (half-resolution submissions), it is
            upsampled per component with ``scipy.ndimage.zoom(order=upsample_order)`` and **not rescaled**,
            replaying the Learn2Reg 2021 scorer (its values are already in full-resolution voxels).
        upsample_order: spline order of that upsampling (2 in the official scorer).

    Returns:
        ``(1, D, *S)`` float32 displacement in voxels of the (full-resolution) fixed grid, array order.

    Raises:
        ImageReadError: missing/unreadable file, no channel axis of size D, NaN/Inf.
        ValueError: ``full_shape`` of the wrong rank or not reachable from the stored shape.
    """
    caller = "read_l2r_displacement"
    p = Path(path)
    suffix = _suffix(p, caller)
    if not p.is_file():
        raise ImageReadError(f"{p}: file not found.")
    try:
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if "arr_0" not in z.files:
                    raise ImageReadError(f"{p}: .npz has no 'arr_0' array (keys: {z.files}).")
                arr = np.asarray(z["arr_0"], dtype=np.float32)
            if arr.ndim in (3, 4) and arr.shape[0] == arr.ndim - 1:
                arr = np.moveaxis(arr, 0, -1)  # the LUMIR scorer's rule: channels-first if shape[0] == D
        else:
            arr = np.asarray(nib.load(str(p)).dataobj, dtype=np.float32)
    except ImageReadError:
        raise
    except Exception as exc:  # nibabel / numpy raise many types for damaged files
        raise ImageReadError(f"{p}: not a readable displacement file ({type(exc).__name__}: {exc}).") from exc
    if arr.ndim not in (3, 4) or arr.shape[-1] != arr.ndim - 1:
        hint = "; a 5D (X, Y, Z, 1, 3) file is an ITK field in mm: use read_itk_displacement" if arr.ndim == 5 else ""
        raise ImageReadError(f"{p}: expected a channels-last field (*S, D), D == len(S), got shape {arr.shape}{hint}.")
    if not np.isfinite(arr).all():
        raise ImageReadError(f"{p}: contains {int((~np.isfinite(arr)).sum())} NaN/Inf values.")
    dims = arr.ndim - 1
    comps = [arr[..., k] for k in range(dims)]
    if full_shape is not None:
        full = tuple(int(s) for s in full_shape)
        if len(full) != dims:
            raise ValueError(f"{caller}: `full_shape` {full} must have {dims} entries for field shape {arr.shape}.")
        stored = comps[0].shape
        if stored != full:
            factors = [f / s for f, s in zip(full, stored)]
            comps = [scipy.ndimage.zoom(c, factors, order=upsample_order) for c in comps]
            if comps[0].shape != full:
                raise ValueError(f"{caller}: cannot upsample stored shape {stored} to `full_shape` {full}.")
    out = np.stack(comps, axis=0)[None]
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def l2r_case_id(path: str | os.PathLike) -> str:
    """Learn2Reg / LUMIR case id of an image file: ``"3455"`` for ``.../LUMIRMRI_3455_0000.nii.gz``.

    Names of the form ``<anything>_<4 digits>_<4 digits>.nii.gz`` (``OASIS_0395_0000.nii.gz``) give the first
    4-digit group - the characters the challenge scorers cut with ``name[-16:-12]``. Any other name gives the file
    name without its ``.nii.gz``/``.nii``/``.mha``/``.nrrd`` extension (a scorer would not find such files).

    Raises:
        ValueError: ``path`` has no file name.
    """
    name = Path(path).name
    if not name:
        raise ValueError(f"l2r_case_id: `path` has no file name, got {str(path)!r}.")
    match = _CASE_RE.match(name)
    if match:
        return match.group(1)
    return image_stem(name)


def _submission_name(folder: Path, caller: str) -> str:
    """``disp_<fixed>_<moving>.nii.gz`` from ``folder/metrics.json`` (``"pair"``: the input paths)."""
    metrics_path = folder / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ValueError(f"{caller}: {metrics_path}: not a readable JSON file ({type(exc).__name__}: {exc}).") from exc
    pair = metrics.get("pair") if isinstance(metrics, dict) else None
    if not isinstance(pair, dict) or not all(isinstance(pair.get(k), str) for k in ("fixed_image", "moving_image")):
        raise ValueError(f"{caller}: {metrics_path}: no 'pair' object with string 'fixed_image' and 'moving_image'.")
    try:
        return l2r_disp_name(l2r_case_id(pair["fixed_image"]), l2r_case_id(pair["moving_image"]))
    except ValueError as exc:
        raise ValueError(f"{caller}: {metrics_path}: cannot name the submission file ({exc}).") from exc


def collect_submission(
    output_dir: str | os.PathLike, submission_dir: str | os.PathLike, overwrite: bool = False
) -> list[Path]:
    """Gather the per-pair ``disp.nii.gz`` files of an inference run into a Learn2Reg / LUMIR submission folder.

    Every ``<output_dir>/<pair>/`` holding a ``metrics.json`` (as written by
    :class:`common.engines.inference.SaveRegistrationOutputsd`) is one pair; its ``disp.nii.gz`` is copied
    byte for byte (already the channels-last fixed-grid voxel format the scorers read) to
    ``<submission_dir>/disp_<fixed>_<moving>.nii.gz``, the ids being :func:`l2r_case_id` of the ``fixed_image``
    and ``moving_image`` paths stored in ``metrics.json["pair"]``. Hidden folders (``.name``, e.g. the
    ``.<pair>.partial-<pid>`` folders of an interrupted run) are skipped. All names are checked before anything
    is copied, so a clash leaves the submission folder untouched; each copy is atomic (temp file + rename).

    Args:
        output_dir: inference output folder (one sub-folder per pair).
        submission_dir: folder to write the ``disp_*.nii.gz`` files into (created if needed).
        overwrite: replace existing submission files (default: refuse).

    Returns:
        The written paths, sorted.

    Raises:
        ValueError: ``output_dir`` missing or without pair folders; ``submission_dir`` is a file; a pair folder without ``disp.nii.gz``; an
            unreadable ``metrics.json``; two pairs mapping to the same submission name.
        FileExistsError: a submission file exists and ``overwrite`` is False.
    """
    caller = "collect_submission"
    src_root, dst_root = Path(output_dir), Path(submission_dir)
    if not src_root.is_dir():
        raise ValueError(f"{caller}: {src_root}: output folder not found.")
    if dst_root.exists() and not dst_root.is_dir():
        raise ValueError(f"{caller}: {dst_root}: submission path exists and is not a folder.")
    folders = sorted(
        p for p in src_root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "metrics.json").is_file()
    )
    if not folders:
        raise ValueError(f"{caller}: {src_root}: no pair folders (<pair>/metrics.json) found; run inference first.")
    plan: dict[str, Path] = {}
    for folder in folders:
        disp = folder / "disp.nii.gz"
        if not disp.is_file():
            raise ValueError(
                f"{caller}: {folder}: has metrics.json but no disp.nii.gz (inference with write_l2r off?)."
            )
        name = _submission_name(folder, caller)
        if name in plan:
            raise ValueError(
                f"{caller}: {plan[name].parent} and {folder} both map to {name}; the case ids of their "
                "fixed/moving image names coincide."
            )
        plan[name] = disp
    if not overwrite:
        for name in sorted(plan):
            if (dst_root / name).exists():
                raise FileExistsError(f"{caller}: {dst_root / name}: exists; pass overwrite=True to replace it.")
    written = []
    for name, disp in sorted(plan.items()):
        with atomic_path(dst_root / name) as tmp:
            shutil.copyfile(disp, tmp)
        written.append(dst_root / name)
    return written
