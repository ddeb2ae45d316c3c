"""What the MONAI Label app needs that does not depend on MONAI Label (tested in the default suite).

* **Segment values for 3D Slicer.** Slicer's MONAI Label module imports a returned label map by giving the
  value ``i + 1`` to the ``i``-th label name the model publishes (names sorted by their published value,
  ``background`` dropped). The app therefore publishes the 32 structures as ``{name: 1..32}`` in
  :data:`~common.data.brain.labels.BRAIN_EVAL_LABELS` order and returns maps in those values
  (:func:`to_slicer_values`); :func:`slicer_segments` replays the module's mapping (used by the tests).
* **Upload checks**: an uploaded image or label is refused with one line naming the problem before it reaches
  the datastore (:func:`check_image_upload`, :func:`check_label_upload`).
* **Output folders** under one root with a size cap (:func:`prune_outputs`): the oldest results go first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from common.data.brain.labels import BRAIN_EVAL_LABELS, remap_to_eval
from common.io.nifti import ImageReadError, read_label_map, read_nifti

__all__ = [
    "slicer_label_names",
    "to_slicer_values",
    "slicer_segments",
    "check_image_upload",
    "check_label_upload",
    "prune_outputs",
    "folder_bytes",
    "result_folder_name",
]


def slicer_label_names() -> dict[str, int]:
    """``{structure name: value}`` with values ``1..32`` in FreeSurfer-code order (what ``/info`` publishes)."""
    return {name: i + 1 for i, name in enumerate(BRAIN_EVAL_LABELS.values())}


def to_slicer_values(freesurfer_labels: np.ndarray) -> np.ndarray:
    """FreeSurfer-coded map -> values of :func:`slicer_label_names` (codes outside the 32 structures -> 0)."""
    return remap_to_eval(freesurfer_labels, consecutive=True)


def slicer_segments(label_map: np.ndarray, labels: dict[str, int] | list[str]) -> dict[str, np.ndarray]:
    """The segments 3D Slicer's MONAI Label module builds from ``label_map`` and a model's published labels.

    The module sorts a ``{name: value}`` dict by value, drops ``background`` and imports value ``i + 1`` as the
    ``i``-th name (``ImportLabelmapToSegmentationNode`` with that list of segment ids). Returns ``{name: mask}``.
    """
    if isinstance(labels, dict):
        names = [k for k, _ in sorted(labels.items(), key=lambda item: item[1])]
    else:
        names = list(labels)
    names = [n for n in names if n != "background"]
    return {name: np.asarray(label_map) == i + 1 for i, name in enumerate(names)}


def check_image_upload(path: str | os.PathLike, name: str | None = None) -> tuple[tuple[int, ...], np.ndarray]:
    """Refuse an upload that is not a usable 3D image; returns ``(shape, affine)``.

    Raises:
        ImageReadError: one line naming ``name`` (the client's file name) and the problem.
    """
    shown = name or Path(path).name
    try:
        arr, affine = read_nifti(path, ndim=3)
    except ImageReadError as exc:
        raise ImageReadError(f"{shown}: {_reason(exc, path)}") from None
    if arr.size == 0 or min(arr.shape) < 8:
        raise ImageReadError(f"{shown}: a 3D image needs at least 8 voxels per axis, got shape {arr.shape}.")
    if float(arr.max() - arr.min()) <= 0:
        raise ImageReadError(f"{shown}: the image is constant; there is nothing to register.")
    return tuple(int(s) for s in arr.shape), affine


def check_label_upload(path: str | os.PathLike, image: str | os.PathLike, name: str | None = None) -> None:
    """Refuse a label upload that is not an integer 3D map in the app's values (0..32) on the grid of ``image``."""
    shown = name or Path(path).name
    try:
        labels, affine = read_label_map(path, ndim=3)
    except ImageReadError as exc:
        raise ImageReadError(f"{shown}: {_reason(exc, path)}") from None
    top, n = int(labels.max(initial=0)), len(BRAIN_EVAL_LABELS)
    if top > n:
        raise ImageReadError(
            f"{shown}: label values up to {top}; this app's labels are 1..{n} in the order of the structure names "
            "in /info/ (FreeSurfer codes, e.g. a downloaded labels.nii.gz, must be converted first)."
        )
    ref = nib.load(str(image))  # the datastore image: its header is enough
    ref_shape = tuple(int(n) for n in ref.shape[:3])
    if labels.shape != ref_shape:
        raise ImageReadError(f"{shown}: label shape {labels.shape} differs from the image's {ref_shape}.")
    if not np.allclose(affine, ref.affine, atol=1e-3):
        raise ImageReadError(f"{shown}: the label map's affine differs from the image's (not on its grid).")


def _reason(exc: Exception, path: str | os.PathLike) -> str:
    """The problem part of an :class:`ImageReadError` message (without the temporary file's path)."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def folder_bytes(folder: str | os.PathLike) -> int:
    """Total size of the files under ``folder``."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


RECORDS = ("atlas.json", "registration.json")


def prune_outputs(root: str | os.PathLike, max_bytes: int, keep: str | os.PathLike | None = None,
                  busy: set[str] | None = None) -> list[Path]:  # fmt: skip
    """Delete the oldest result folders (``root/<model>/<image>``) until ``root`` holds at most ``max_bytes``.

    Only finished results are candidates: folders holding a result record (:data:`RECORDS`, written last) and not
    in ``busy`` (resolved paths of folders still being written). ``keep`` (the folder just written) is never
    deleted, even if it alone is over the cap. Returns the deleted folders, oldest first.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    keep_path = Path(keep).resolve() if keep is not None else None
    busy = busy or set()
    results = [d for m in root.iterdir() if m.is_dir() for d in m.iterdir()
               if d.is_dir() and (any((d / r).is_file() for r in RECORDS) or str(d.resolve()) in busy)]  # fmt: skip
    sizes = {d: folder_bytes(d) for d in results}
    total = sum(sizes.values())  # every result counts; only finished ones can go
    folders = [d for d in results if str(d.resolve()) not in busy]
    removed: list[Path] = []
    for folder in sorted(folders, key=lambda d: d.stat().st_mtime):
        if total <= max_bytes:
            break
        if keep_path is not None and folder.resolve() == keep_path:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= sizes[folder]
        removed.append(folder)
    return removed


def result_folder_name(image_id: str) -> str:
    """A folder name for an image id that differs for different ids: the id without its image extension, unsafe
    characters replaced, plus a short hash of the id when anything was replaced (``a b`` and ``a_b`` differ)."""
    import hashlib
    import re

    stem = re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd)$", "", str(image_id))
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:120]
    if safe != stem or safe in ("", ".", "..") or safe.startswith("."):
        safe = f"{safe.strip('.') or 'image'}-{hashlib.sha1(str(image_id).encode()).hexdigest()[:8]}"
    return safe
