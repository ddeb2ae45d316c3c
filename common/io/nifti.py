"""Reading and writing NIfTI files with clear errors and atomic writes (never a half-written output)."""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["ImageReadError", "atomic_path", "gzip_file", "read_label_map", "read_nifti", "save_image", "write_nifti"]


class ImageReadError(ValueError):
    """A file could not be used as an image; the message names the file and the problem."""


def read_nifti(
    path: str | os.PathLike,
    ndim: int | None = None,
    dtype: type | None = np.float32,
    allow_nonfinite: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI image as ``(array, affine)`` in nibabel's array order (RAS affine).

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        ndim: required number of spatial dimensions (2 or 3); trailing singleton axes are dropped first.
        dtype: array dtype (None keeps the stored one).
        allow_nonfinite: accept NaN/Inf voxels (default: refuse them).

    Raises:
        ImageReadError: missing, unreadable, truncated or non-NIfTI file; wrong dimensionality; NaN/Inf.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: file not found.")
    if p.is_dir():
        raise ImageReadError(f"{p}: is a directory, expected a NIfTI file.")
    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise ImageReadError(f"{p}: not a readable NIfTI image ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageReadError(f"{p}: not a NIfTI image (nibabel read it as {type(img).__name__}).")
    if data.dtype.fields is not None or not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise ImageReadError(
            f"{p}: voxels of type {data.dtype} (e.g. RGB or complex) are not an intensity image; "
            "convert it to one scalar channel (e.g. grayscale) first."
        )
    if np.iscomplexobj(data):
        raise ImageReadError(f"{p}: complex voxels are not an intensity image; save the magnitude instead.")
    while data.ndim > 2 and data.shape[-1] == 1 and (ndim is None or data.ndim > ndim):
        data = data[..., 0]
    if ndim is not None and data.ndim != ndim:
        raise ImageReadError(
            f"{p}: expected a {ndim}D image, got shape {data.shape} ({data.ndim}D)"
            + ("; pass one volume/channel at a time." if data.ndim > ndim else ".")
        )
    if not allow_nonfinite and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise ImageReadError(f"{p}: contains {n_bad} NaN/Inf voxels.")
    if dtype is not None and np.issubdtype(np.dtype(dtype), np.floating) and data.size:
        big = float(np.abs(data).max()) if np.issubdtype(data.dtype, np.number) else 0.0
        limit = float(np.finfo(dtype).max)
        if big > limit:
            raise ImageReadError(
                f"{p}: values up to {big:.3g} do not fit {np.dtype(dtype).name} (max {limit:.3g}); rescale the image."
            )
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if not allow_nonfinite and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise ImageReadError(f"{p}: contains {n_bad} NaN/Inf voxels.")
    return np.asarray(data), np.asarray(img.affine, dtype=np.float64)


def read_label_map(path: str | os.PathLike, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load an integer label map as ``(int64 array, affine)``; non-integer or negative values are refused.

    Float storage is fine when every value is a whole number (FreeSurfer and many tools write float labels), but
    a map with e.g. 1.5 or 2.7 is not a label map (an intensity image, or a resampled one): it is refused rather
    than silently rounded.
    """
    data, affine = read_nifti(path, ndim=ndim, dtype=None)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.floating):
        frac = np.abs(data - np.rint(data))
        if data.size and float(frac.max()) > 1e-3:
            bad = data.flat[int(np.argmax(frac))]
            n = int((frac > 1e-3).sum())
            raise ImageReadError(
                f"{path}: not a label map: {n} voxels hold non-integer values (e.g. {float(bad):g}); "
                "labels must be whole numbers (resample label maps with nearest neighbour)."
            )
        data = np.rint(data)
    if data.size and data.min() < 0:
        raise ImageReadError(f"{path}: not a label map: negative values (min {data.min()}).")
    return data.astype(np.int64), affine


_UMASK_LOCK = threading.Lock()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    with _UMASK_LOCK:  # reading the umask means setting it: one thread at a time (outputs are written in parallel)
        umask = os.umask(0)
        os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the final file normal permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    dtype: type | None = None,
    compresslevel: int | None = None,
) -> Path:
    """Write ``array`` with ``affine`` to ``path`` atomically (temp file + rename). Returns the path.

    ``compresslevel`` (0-9) sets the gzip level of a ``.nii.gz`` (None: nibabel's default, 1; 0 stores the data
    uncompressed inside a valid gzip file, several times faster for displacement fields, which gzip shrinks by
    only about 10 %).
    """
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    save_image(img, path, compresslevel)
    return Path(path)


def save_image(img: nib.Nifti1Image, path: str | os.PathLike, compresslevel: int | None = None) -> Path:
    """``nib.save`` atomically, with an explicit gzip level for ``.nii.gz`` paths (see :func:`write_nifti`)."""
    final = Path(path)
    if compresslevel is not None and not 0 <= int(compresslevel) <= 9:
        raise ValueError(f"save_image: `compresslevel` must be 0-9 or None, got {compresslevel!r}.")
    with atomic_path(final) as tmp:
        if compresslevel is None or not final.name.endswith(".gz"):
            nib.save(img, str(tmp))
        else:
            from nibabel.fileholders import FileHolder

            with open(tmp, "wb") as raw, _gzip_writer(raw, compresslevel) as gz:
                img.to_file_map({"image": FileHolder(fileobj=gz)})
    return final


def gzip_file(src: str | os.PathLike, dst: str | os.PathLike, compresslevel: int = 1) -> Path:
    """Compress the file ``src`` into ``dst`` (gzip, ``compresslevel`` 0-9), atomically; ``src`` is kept."""
    import shutil

    with (
        atomic_path(dst) as tmp,
        open(src, "rb") as fin,
        open(tmp, "wb") as raw,
        _gzip_writer(raw, compresslevel) as gz,
    ):
        shutil.copyfileobj(fin, gz, 8 << 20)
    return Path(dst)


def _gzip_writer(raw, compresslevel: int) -> gzip.GzipFile:
    """A gzip stream into the open binary file ``raw``: no name and a zero time in the header (reproducible)."""
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=int(compresslevel), mtime=0)
