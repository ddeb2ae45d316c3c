"""Write cardiac 2D pair data sets to disk: the synthetic phantom, or slices of a real ACDC copy.

Both writers produce the same layout under ``out_dir``::

    prepare_config.json                     settings; a resumed run must use the same ones
    datalist.json                           {"training": [...], "validation": [...], "test": [...]}
    subjects/<sid>/<sid>_ED.nii.gz          2D image, float32 in [0, 1], 1.5 mm pixels by default
    subjects/<sid>/<sid>_ED_gt.nii.gz       2D labels, uint8 (1 RV cavity, 2 myocardium, 3 LV cavity)
    subjects/<sid>/<sid>_ES.nii.gz, _ES_gt.nii.gz
    subjects/<sid>.json                     completion marker (phantom parameters / ACDC slice list)

Datalist entries have the keys ``moving_image``, ``fixed_image``, ``moving_label``, ``fixed_label``
(paths relative to ``out_dir``, as MONAI's ``load_decathlon_datalist(base_dir=out_dir)`` expects) and
``id``; each subject contributes one entry per direction (``ED->ES``: moving ED, fixed ES; ``ES->ED``).

Runs are resumable: every file is written to a temporary name and renamed
(:func:`common.io.nifti.write_nifti`), and the per-subject marker is written last, so a subject whose
marker exists is complete and skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.data.cardiac.acdc import acdc_slice_pairs, find_acdc_patients, split_patients
from common.data.cardiac.phantom import CardiacPhantomParams
from common.data.cardiac.preprocess import DIRECTIONS, slice_affine
from common.data.cardiac.render import render_cardiac_phantom
from common.data.cardiac.sampling import sample_phantom_params
from common.data.cardiac.stats import load_cardiac_stats
from common.data.datalist import check_prepare_config, write_json
from common.io.nifti import write_nifti

__all__ = ["phantom_subject", "prepare_acdc_dataset", "prepare_phantom_dataset"]

_SPLITS = {"training": ("train", 0), "validation": ("val", 1), "test": ("test", 2)}


def _frame_files(folder: str, sid: str) -> dict[str, str]:
    return {f"{ph}_{kind}": f"subjects/{folder}/{sid}_{ph.upper()}{suffix}.nii.gz"
            for ph in ("ed", "es") for kind, suffix in (("image", ""), ("label", "_gt"))}  # fmt: skip


def _write_frames(out_dir: Path, folder: str, sid: str, arrays: dict[str, np.ndarray], spacing_mm: float) -> None:
    affine = slice_affine(spacing_mm)
    for key, rel in _frame_files(folder, sid).items():
        dtype = np.uint8 if key.endswith("label") else np.float32
        write_nifti(np.asarray(arrays[key]).astype(dtype), affine, out_dir / rel)


def _check_directions(directions: Sequence[str], caller: str) -> None:
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise ValueError(f"{caller}: directions must be a non-empty subset of {DIRECTIONS}, got {list(directions)}.")


def _entries(folder: str, sid: str, directions: Sequence[str]) -> list[dict[str, str]]:
    files = _frame_files(folder, sid)
    out = []
    for direction in directions:
        m, f = (s.lower() for s in direction.split("->"))
        out.append(
            {
                "moving_image": files[f"{m}_image"],
                "fixed_image": files[f"{f}_image"],
                "moving_label": files[f"{m}_label"],
                "fixed_label": files[f"{f}_label"],
                "id": f"{sid}_{m.upper()}-{f.upper()}",
            }
        )
    return out


def phantom_subject(
    split: str, index: int, seed: int = 0, size: int = 112, spacing_mm: float = 1.5, stats: dict | None = None
) -> tuple[str, CardiacPhantomParams]:
    """Id and parameters of phantom subject ``index`` of ``split`` ('training', 'validation' or 'test').

    Each split draws from its own seed stream ``(seed, split, index)``: test subjects never coincide with
    training subjects, and changing the number of training subjects leaves the test set unchanged.
    """
    if split not in _SPLITS:
        raise ValueError(f"phantom_subject: split must be one of {sorted(_SPLITS)}, got {split!r}.")
    prefix, code = _SPLITS[split]
    stats = stats if stats is not None else load_cardiac_stats()
    rng = np.random.default_rng([int(seed), code, int(index)])
    return f"phantom_{prefix}{index:04d}", sample_phantom_params(rng, stats, (size, size), spacing_mm)


def prepare_phantom_dataset(
    out_dir: str | os.PathLike,
    n_train: int = 200,
    n_val: int = 40,
    n_test: int = 40,
    seed: int = 0,
    size: int = 112,
    spacing_mm: float = 1.5,
    directions: Sequence[str] = DIRECTIONS,
    stats_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Render and write ``n_train + n_val + n_test`` phantom subjects; returns the datalist path.

    Args:
        out_dir: output folder (created; resumable, see the module docstring).
        n_train, n_val, n_test: subjects per split.
        seed: base seed (subject parameters come from ``(seed, split, index)``).
        size: image size in pixels (square).
        spacing_mm: pixel size in mm.
        directions: pair directions listed in the datalist.
        stats_path: intensity statistics JSON (default: the shipped table).
        progress: show a tqdm bar.
    """
    if min(n_train, n_val, n_test) < 0:
        raise ValueError(f"prepare_phantom_dataset: subject counts must be >= 0, got {(n_train, n_val, n_test)}.")
    _check_directions(directions, "prepare_phantom_dataset")
    out = Path(out_dir)
    stats = load_cardiac_stats(stats_path)
    config = {
        "kind": "cardiac_phantom",
        "version": 1,
        "seed": int(seed),
        "size": int(size),
        "spacing_mm": float(spacing_mm),
        "stats_rows": [r.get("file") for r in stats["rows"]],
    }
    check_prepare_config(out, config, "prepare_phantom_dataset")
    jobs = [(split, i) for split, n in zip(_SPLITS, (n_train, n_val, n_test)) for i in range(n)]
    datalist: dict[str, list] = {split: [] for split in _SPLITS}
    for split, i in tqdm(jobs, desc="cardiac phantom", disable=not progress):
        sid, params = phantom_subject(split, i, seed, size, spacing_mm, stats)
        marker = out / "subjects" / f"{sid}.json"
        if not marker.exists():
            _write_frames(out, sid, sid, render_cardiac_phantom(params, stats), spacing_mm)
            write_json(params.to_dict(), marker)
        datalist[split] += _entries(sid, sid, directions)
    path = out / "datalist.json"
    write_json(datalist, path)
    return path


def prepare_acdc_dataset(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    n_folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    size: int = 112,
    spacing_mm: float = 1.5,
    center: str = "label",
    directions: Sequence[str] = DIRECTIONS,
    progress: bool = True,
) -> Path:
    """Write 2D ED/ES slice pairs of a real ACDC copy; returns the datalist path.

    ``training/`` patients are split patient-wise (:func:`common.data.cardiac.acdc.split_patients`, fold
    ``fold`` of ``n_folds`` is validation); ``testing/`` patients (when labelled) form the test split.
    Slices are selected, cropped and normalised by :func:`common.data.cardiac.acdc.extract_slices`.
    """
    _check_directions(directions, "prepare_acdc_dataset")
    out = Path(out_dir)
    patients = find_acdc_patients(root, require_labels=False)
    labelled = [p for p in patients if p.ed_label is not None and p.es_label is not None]
    training = [p for p in labelled if p.subset != "testing"]
    test = [p for p in labelled if p.subset == "testing"]
    if not training:
        raise ValueError(f"prepare_acdc_dataset: {root}: no labelled training patients found.")
    train, val = split_patients(training, n_folds=n_folds, fold=fold, seed=seed)
    config = {
        "kind": "acdc",
        "version": 1,
        "root": str(Path(root).resolve()),
        "n_folds": n_folds,
        "fold": fold,
        "seed": seed,
        "size": size,
        "spacing_mm": spacing_mm,
        "center": center,
    }
    check_prepare_config(out, config, "prepare_acdc_dataset")
    datalist: dict[str, list] = {"training": [], "validation": [], "test": []}
    jobs = [("training", p) for p in train] + [("validation", p) for p in val] + [("test", p) for p in test]
    for split, patient in tqdm(jobs, desc="ACDC slices", disable=not progress):
        marker = out / "subjects" / f"{patient.id}.json"
        if marker.exists():
            slice_ids = json.loads(marker.read_text())["slices"]
        else:
            pairs = acdc_slice_pairs(patient, size=size, spacing_mm=spacing_mm, center=center, directions=DIRECTIONS)
            slice_ids = []
            for pair in pairs[::2]:  # ED->ES entries carry moving = ED, fixed = ES
                sid = pair["id"].rsplit("_", 1)[0]
                arrays = {
                    "ed_image": pair["moving_image"][0],
                    "es_image": pair["fixed_image"][0],
                    "ed_label": pair["moving_label"][0],
                    "es_label": pair["fixed_label"][0],
                }
                _write_frames(out, patient.id, sid, arrays, spacing_mm)
                slice_ids.append(sid)
            write_json({"patient": patient.id, "group": patient.group, "slices": slice_ids}, marker)
        for sid in slice_ids:
            datalist[split] += _entries(patient.id, sid, directions)
    path = out / "datalist.json"
    write_json(datalist, path)
    return path
