"""Reader for the ACDC cine-MRI layout: ED/ES frames, 2D short-axis slice pairs, patient-wise splits.

Layout (as distributed by the ACDC challenge; ``root`` may be the folder holding ``training/`` and
``testing/``, or one of them)::

    root/training/patient001/Info.cfg                  ED: 1, ES: 12, Group: DCM, Height, NbFrame, Weight
    root/training/patient001/patient001_frame01.nii.gz       ED frame (X, Y, Z)
    root/training/patient001/patient001_frame01_gt.nii.gz    labels 1 RV cavity, 2 myocardium, 3 LV cavity
    root/training/patient001/patient001_frame12.nii.gz       ES frame (+ _gt)
    root/training/patient001/patient001_4d.nii.gz            whole cine (X, Y, Z, T), optional

2D pairs follow the slice protocol of Hering et al. (2019): per short-axis slice index, the ED and ES
slices form a pair if both contain all three labels; slices are resampled in-plane to ``spacing_mm``
(default 1.5 mm), cropped to 112 x 112 around the centroid of the union of both frames' labels (one crop
box for both frames, so cropping adds no motion) or around the image centre, and each slice is mapped to
[0, 1] by its 1st/99th intensity percentiles. Each slice yields the pairs ED->ES (moving ED, fixed ES)
and ES->ED.

References:
    Bernard et al., "Deep learning techniques for automatic MRI cardiac multi-structures segmentation and
    diagnosis: is the problem solved?", IEEE TMI 37(11), 2018 (the ACDC data set).
    Hering, Kuckertz, Heldmann, Heinrich, "Enhancing label-driven deep deformable image registration with
    local distance metrics for state-of-the-art cardiac motion tracking", BVM 2019.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.data.cardiac.preprocess import (
    DEFAULT_PERCENTILES,
    DIRECTIONS,
    crop_center,
    label_centroid,
    make_pairs,
    normalise_percentile,
    resample_inplane,
)
from common.io.convert import spacing_from_affine
from common.io.nifti import read_nifti

__all__ = [
    "ACDC_LABELS",
    "AcdcLayoutError",
    "AcdcPatient",
    "acdc_slice_pairs",
    "extract_slices",
    "find_acdc_patients",
    "load_acdc_patient",
    "read_info_cfg",
    "split_patients",
]

ACDC_LABELS: dict[int, str] = {1: "RV cavity", 2: "myocardium", 3: "LV cavity"}
_PATIENT_RE = re.compile(r"^patient\d+$")


class AcdcLayoutError(ValueError):
    """The ACDC folder does not have the expected layout; the message names the file or folder."""


@dataclass(frozen=True)
class AcdcPatient:
    """One ACDC patient: Info.cfg fields (height in cm, weight in kg) and the paths of its frames."""

    id: str
    subset: str
    folder: Path
    ed: int
    es: int
    group: str | None
    height_cm: float | None
    weight_kg: float | None
    n_frames: int | None
    ed_image: Path
    es_image: Path
    ed_label: Path | None
    es_label: Path | None
    cine: Path | None


def read_info_cfg(path: str | os.PathLike) -> dict[str, Any]:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines) into ED/ES/NbFrame ints, Height/Weight floats.

    Raises:
        AcdcLayoutError: missing file, a line without ``:``, missing ED/ES, or a non-numeric value.
    """
    p = Path(path)
    if not p.is_file():
        raise AcdcLayoutError(f"read_info_cfg: {p}: file not found (every ACDC patient folder needs one).")
    info: dict[str, Any] = {}
    for n, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise AcdcLayoutError(f"read_info_cfg: {p}: line {n} is not 'Key: value': {line!r}.")
        key, value = (s.strip() for s in line.split(":", 1))
        try:
            if key in ("ED", "ES", "NbFrame"):
                info[key] = int(float(value))
            elif key in ("Height", "Weight"):
                info[key] = float(value)
            else:
                info[key] = value
        except ValueError as exc:
            raise AcdcLayoutError(f"read_info_cfg: {p}: line {n}: {key} is not a number: {value!r}.") from exc
    missing = [k for k in ("ED", "ES") if k not in info]
    if missing:
        raise AcdcLayoutError(f"read_info_cfg: {p}: missing key(s) {missing}.")
    return info


def _frame_path(folder: Path, pid: str, frame: int, suffix: str = "") -> Path | None:
    for ext in (".nii.gz", ".nii"):
        candidate = folder / f"{pid}_frame{frame:02d}{suffix}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _patient(folder: Path, subset: str, require_labels: bool) -> AcdcPatient:
    pid = folder.name
    info = read_info_cfg(folder / "Info.cfg")
    paths: dict[str, Path | None] = {}
    for phase in ("ED", "ES"):
        image = _frame_path(folder, pid, info[phase])
        expected = folder / f"{pid}_frame{info[phase]:02d}.nii.gz"
        if image is None:
            raise AcdcLayoutError(
                f"find_acdc_patients: {expected}: {phase} frame file not found "
                f"({phase}: {info[phase]} in {folder / 'Info.cfg'})."
            )
        label = _frame_path(folder, pid, info[phase], "_gt")
        if label is None and require_labels:
            raise AcdcLayoutError(
                f"find_acdc_patients: {str(expected).replace('.nii.gz', '_gt.nii.gz')}: {phase} label file "
                "not found (pass require_labels=False to list unlabelled patients)."
            )
        paths[f"{phase.lower()}_image"], paths[f"{phase.lower()}_label"] = image, label
    cine = next((c for c in (folder / f"{pid}_4d.nii.gz", folder / f"{pid}_4d.nii") if c.is_file()), None)
    return AcdcPatient(
        id=pid,
        subset=subset,
        folder=folder,
        ed=info["ED"],
        es=info["ES"],
        group=info.get("Group"),
        height_cm=info.get("Height"),
        weight_kg=info.get("Weight"),
        n_frames=info.get("NbFrame"),
        cine=cine,
        **paths,  # type: ignore[arg-type]
    )


def find_acdc_patients(
    root: str | os.PathLike, subsets: Sequence[str] = ("training", "testing"), require_labels: bool = True
) -> list[AcdcPatient]:
    """List the patients under ``root`` (sorted by subset, then id).

    Args:
        root: folder holding ``training/`` and/or ``testing/``, or a folder of ``patientNNN`` folders.
        subsets: which subset folders to read when ``root`` holds them.
        require_labels: raise if an ED/ES ``_gt`` file is missing (else its path is ``None``).

    Raises:
        AcdcLayoutError: ``root`` missing, no patient folders, missing ``Info.cfg`` or frame files.
    """
    base = Path(root)
    if not base.is_dir():
        raise AcdcLayoutError(f"find_acdc_patients: {base}: folder not found.")
    folders = [(s, base / s) for s in subsets if (base / s).is_dir()] or [(base.name, base)]
    patients = []
    for subset, folder in folders:
        for child in sorted(folder.iterdir()):
            if child.is_dir() and _PATIENT_RE.match(child.name):
                patients.append(_patient(child, subset, require_labels))
    if not patients:
        raise AcdcLayoutError(
            f"find_acdc_patients: {base}: no patientNNN folders (looked in {[str(f) for _, f in folders]})."
        )
    return patients


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return spacing_from_affine(affine, 3)  # type: ignore[return-value]


def load_acdc_patient(patient: AcdcPatient, spacing_mm: float | None = 1.5) -> dict[str, np.ndarray]:
    """Load ED/ES images (float32) and labels (uint8) as ``(X, Y, Z)``, resampled in-plane to ``spacing_mm``.

    Raises:
        AcdcLayoutError: missing labels, a label file whose shape/affine differs from its image, ED and
            ES of different shapes, or label values outside {0, 1, 2, 3}.
        common.io.nifti.ImageReadError: unreadable or non-3D file (message names the file).
    """
    out: dict[str, np.ndarray] = {}
    shapes = {}
    for phase in ("ed", "es"):
        image_path: Path = getattr(patient, f"{phase}_image")
        label_path: Path | None = getattr(patient, f"{phase}_label")
        if label_path is None:
            raise AcdcLayoutError(f"load_acdc_patient: {patient.folder}: no {phase.upper()} label file.")
        image, affine = read_nifti(image_path, ndim=3)
        label, label_affine = read_nifti(label_path, ndim=3, dtype=None)
        if label.shape != image.shape or not np.allclose(label_affine, affine, atol=1e-3):
            raise AcdcLayoutError(
                f"load_acdc_patient: {label_path}: label geometry (shape {label.shape}, spacing "
                f"{_spacing(label_affine)}) does not match the image {image_path.name} (shape {image.shape}, "
                f"spacing {_spacing(affine)})."
            )
        values = np.unique(label)
        if not np.isin(values, list(range(4))).all():
            raise AcdcLayoutError(f"load_acdc_patient: {label_path}: label values {values.tolist()} not in 0..3.")
        spacing = _spacing(affine)
        shapes[phase] = (image.shape, image_path)
        if spacing_mm is not None:
            image = resample_inplane(image, spacing, spacing_mm)
            label = resample_inplane(label, spacing, spacing_mm, is_label=True)
        out[f"{phase}_image"], out[f"{phase}_label"] = image.astype(np.float32), label.astype(np.uint8)
    if shapes["ed"][0] != shapes["es"][0]:
        raise AcdcLayoutError(
            f"load_acdc_patient: {shapes['es'][1]}: ES shape {shapes['es'][0]} differs from ED "
            f"{shapes['ed'][1].name} shape {shapes['ed'][0]}."
        )
    return out


def extract_slices(
    frames: dict[str, np.ndarray],
    size: int = 112,
    center: str = "label",
    required_labels: Sequence[int] = (1, 2, 3),
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> list[dict[str, Any]]:
    """Cropped, normalised 2D slices ``{"slice", "ed_image", "es_image", "ed_label", "es_label"}``.

    Args:
        frames: output of :func:`load_acdc_patient` (``(X, Y, Z)`` arrays).
        size: crop size in pixels.
        center: ``"label"`` (centroid of both frames' labels in that slice) or ``"image"`` (image centre).
        required_labels: keep slices where ED and ES both contain all of these labels.
        percentiles: intensity percentiles mapped to 0 and 1 (per slice and frame).
    """
    if center not in ("label", "image"):
        raise ValueError(f"extract_slices: center must be 'label' or 'image', got {center!r}.")
    slices = []
    for z in range(frames["ed_image"].shape[2]):
        ed_lab, es_lab = frames["ed_label"][:, :, z], frames["es_label"][:, :, z]
        if not all((lab == k).any() for lab in (ed_lab, es_lab) for k in required_labels):
            continue
        c = label_centroid((ed_lab > 0) | (es_lab > 0)) if center == "label" else None
        item: dict[str, Any] = {"slice": z}
        for phase in ("ed", "es"):
            img = frames[f"{phase}_image"][:, :, z]
            crop = crop_center(img, c, size, fill=float(img.min()))
            item[f"{phase}_image"] = normalise_percentile(crop, percentiles)
            item[f"{phase}_label"] = crop_center(frames[f"{phase}_label"][:, :, z], c, size, fill=0)
        slices.append(item)
    return slices


def acdc_slice_pairs(
    patient: AcdcPatient,
    size: int = 112,
    spacing_mm: float | None = 1.5,
    center: str = "label",
    directions: Sequence[str] = DIRECTIONS,
) -> list[dict[str, Any]]:
    """All 2D pair dicts of one patient (see :func:`common.data.cardiac.preprocess.make_pairs`).

    ids look like ``patient001_s03_ED-ES`` (slice index after resampling = original slice index).
    """
    frames = load_acdc_patient(patient, spacing_mm)
    pairs = []
    for s in extract_slices(frames, size=size, center=center):
        sid = f"{patient.id}_s{s['slice']:02d}"
        pairs += make_pairs(s["ed_image"], s["es_image"], s["ed_label"], s["es_label"], sid, directions)
    return pairs


def split_patients(
    patients: Sequence[AcdcPatient | str],
    n_folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    stratify: bool = True,
) -> tuple[list[AcdcPatient | str], list[AcdcPatient | str]]:
    """Patient-wise k-fold split: ``(train, validation)`` for fold ``fold`` of ``n_folds``.

    Patients are shuffled with ``seed`` and dealt round-robin into folds, per ACDC ``Group`` when
    ``stratify`` (so each fold keeps the pathology mix); every patient is in exactly one validation fold.
    """
    if n_folds < 2 or not 0 <= fold < n_folds:
        raise ValueError(f"split_patients: need n_folds >= 2 and 0 <= fold < n_folds, got {n_folds}, {fold}.")
    ids = [p if isinstance(p, str) else p.id for p in patients]
    if len(set(ids)) != len(ids):
        raise ValueError(f"split_patients: duplicate patient ids in {len(ids)} patients.")
    if len(ids) < n_folds:
        raise ValueError(f"split_patients: {len(ids)} patients cannot fill {n_folds} folds.")
    groups: dict[str | None, list[int]] = {}
    for i, p in enumerate(patients):
        key = None if isinstance(p, str) or not stratify else p.group
        groups.setdefault(key, []).append(i)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(ids), dtype=int)
    offset = 0
    for key in sorted(groups, key=str):
        members = rng.permutation(groups[key])
        fold_of[members] = (np.arange(len(members)) + offset) % n_folds
        offset += len(members)
    train = [p for i, p in enumerate(patients) if fold_of[i] != fold]
    val = [p for i, p in enumerate(patients) if fold_of[i] == fold]
    return train, val
