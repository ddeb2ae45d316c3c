"""Readers for the brain data layouts users have; each returns MONAI-style lists of dicts.

Subject items are ``{"id", "image"[, "label"]}`` (absolute paths); pair items are
``{"id", "moving_image", "fixed_image"[, "moving_label", "fixed_label"], "moving_id", "fixed_id"}``
(:mod:`common.data.pairs` builds more pairs). Every referenced file is checked; problems raise
:class:`DatasetLayoutError` naming the file (and the JSON key).

Layouts:

* neurite-OASIS: ``OASIS_OAS1_0001_MR1/aligned_norm.nii.gz`` + ``aligned_seg35.nii.gz`` per subject folder;
* Learn2Reg OASIS: ``OASIS_dataset.json`` with ``training`` (``{"image", "label"[, "mask"]}``) and
  ``registration_val`` (``{"fixed", "moving"}``; ``validation`` is accepted too), paths relative to the
  JSON (``./imagesTr/OASIS_0001_0000.nii.gz``);
* LUMIR: ``LUMIR_dataset.json`` with ``training`` (``{"image"}``, no labels) and ``validation`` pairs;
* IXI / LPBA40 / Mindboggle-style folders: images and labels matched by glob patterns and a subject id;
* this project's own datalists (``{"training": [...], "validation": [...], "test": [...]}``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.data.datalist import is_file, read_json_file, resolve_entry
from common.io.files import image_stem

__all__ = [
    "DatasetLayoutError",
    "read_neurite_oasis",
    "read_l2r_oasis",
    "read_lumir",
    "lumir_datalist",
    "read_image_label_folder",
    "read_datalist",
]


class DatasetLayoutError(ValueError):
    """A data set folder or JSON does not have the expected layout; the message names the file."""


def _existing(path: Path, what: str, caller: str) -> str:
    if not is_file(path):
        raise DatasetLayoutError(f"{caller}: {path}: {what} not found.")
    return str(path)


def _resolve(base: Path, value: Any, source: Path, caller: str) -> Path:
    if not isinstance(value, str):
        raise DatasetLayoutError(f"{caller}: {source}: expected a path string, got {type(value).__name__}.")
    try:
        return resolve_entry(base, value, source, caller)
    except ValueError as exc:
        raise DatasetLayoutError(str(exc)) from exc


def _load_json(path: Path, caller: str) -> dict[str, Any]:
    if not is_file(path):
        raise DatasetLayoutError(f"{caller}: {path}: dataset JSON not found.")
    try:
        data = read_json_file(path, caller)
    except ValueError as exc:
        raise DatasetLayoutError(str(exc)) from exc
    if not isinstance(data, dict):
        raise DatasetLayoutError(f"{caller}: {path}: expected a JSON object at the top, got {type(data).__name__}.")
    return data


def _entries(data: dict, key: str, path: Path, caller: str, required: Sequence[str], optional: bool = False) -> list:
    if key not in data:
        if optional:
            return []
        raise DatasetLayoutError(f"{caller}: {path}: missing key {key!r} (keys present: {sorted(data)}).")
    entries = data[key]
    if not isinstance(entries, list):
        raise DatasetLayoutError(f"{caller}: {path}: {key!r} must be a list, got {type(entries).__name__}.")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(not isinstance(entry.get(r), str) for r in required):
            raise DatasetLayoutError(
                f"{caller}: {path}: {key}[{i}] must be an object with string fields {list(required)}, got {entry!r}."
            )
    return entries


def _case_id(path: str) -> str:
    return image_stem(path)


def read_neurite_oasis(
    root: str | os.PathLike,
    image_name: str = "aligned_norm.nii.gz",
    label_name: str | None = "aligned_seg35.nii.gz",
    folder_glob: str = "OASIS_OAS1_*_MR1",
) -> list[dict[str, str]]:
    """Subjects of the neurite-OASIS layout (``<root>/OASIS_OAS1_0001_MR1/aligned_norm.nii.gz``, ...).

    Args:
        root: folder holding the subject folders.
        image_name, label_name: file names inside each subject folder (``label_name=None``: images only;
            ``aligned_seg4.nii.gz`` for the 4-label segmentation).

    Raises:
        DatasetLayoutError: no subject folder, or a folder lacks the image/label file.
    """
    base = Path(root)
    folders = sorted(p for p in base.glob(folder_glob) if p.is_dir())
    if not folders:
        raise DatasetLayoutError(f"read_neurite_oasis: {base}: no subject folder matching {folder_glob!r}.")
    items = []
    for f in folders:
        item = {"id": f.name.removeprefix("OASIS_"), "image": _existing(f / image_name, "image", "read_neurite_oasis")}
        if label_name is not None:
            item["label"] = _existing(f / label_name, "label map", "read_neurite_oasis")
        items.append(item)
    return items


def _pair(moving: dict, fixed: dict, pid: str) -> dict[str, str]:
    out = {"id": pid, "moving_id": moving["id"], "fixed_id": fixed["id"]}
    out["moving_image"], out["fixed_image"] = moving["image"], fixed["image"]
    if "label" in moving and "label" in fixed:
        out["moving_label"], out["fixed_label"] = moving["label"], fixed["label"]
    return out


def _json_pairs(data, key, path, base, subjects, caller, labels_dir=None) -> list[dict[str, str]]:
    pairs = []
    for entry in _entries(data, key, path, caller, ("fixed", "moving"), optional=True):
        ends = {}
        for role in ("moving", "fixed"):
            image = str(_resolve(base, entry[role], path, caller))
            item = subjects.get(image) or {"id": _case_id(image), "image": _existing(Path(image), "image", caller)}
            if "label" not in item and labels_dir is not None:
                candidate = Path(image.replace(f"{os.sep}images", f"{os.sep}{labels_dir}"))
                if is_file(candidate):
                    item = {**item, "label": str(candidate)}
            ends[role] = item
        pairs.append(_pair(ends["moving"], ends["fixed"], f"{ends['moving']['id']}_to_{ends['fixed']['id']}"))
    return pairs


def _json_subjects(data: dict, path: Path, base: Path, caller: str, with_labels: bool) -> list[dict[str, str]]:
    """The ``training`` subjects of a Learn2Reg dataset JSON (``id``, ``image``, and ``label`` when asked and given)."""
    training = []
    for entry in _entries(data, "training", path, caller, ("image",)):
        image = _resolve(base, entry["image"], path, caller)
        item = {"id": _case_id(str(image)), "image": _existing(image, f"image of {path.name}:training", caller)}
        if with_labels and isinstance(entry.get("label"), str):
            label = _resolve(base, entry["label"], path, caller)
            item["label"] = _existing(label, f"label of {path.name}:training", caller)
        training.append(item)
    return training


def _json_layout(root: str | os.PathLike, json_name: str, caller: str, with_labels: bool) -> tuple:
    """``(base, json path, parsed JSON, training subjects, {image path: subject})`` of a dataset JSON layout."""
    base = Path(root)
    path = base / json_name
    data = _load_json(path, caller)
    training = _json_subjects(data, path, base, caller, with_labels=with_labels)
    return base, path, data, training, {t["image"]: t for t in training}


def read_l2r_oasis(root: str | os.PathLike, json_name: str = "OASIS_dataset.json") -> dict[str, list[dict[str, str]]]:
    """The Learn2Reg OASIS task: ``{"training": subjects, "validation": pairs, "test": pairs}``.

    Validation pairs come from ``registration_val`` (or ``validation``), test pairs from ``registration_test``
    when present; pair images are matched to their training entries for labels, else ``imagesX`` ->
    ``labelsX`` is tried.

    Raises:
        DatasetLayoutError: missing/invalid JSON, missing ``training`` key, malformed entries, missing files.
    """
    caller = "read_l2r_oasis"
    base, path, data, training, subjects = _json_layout(root, json_name, caller, with_labels=True)
    val_key = "registration_val" if "registration_val" in data else "validation"
    validation = _json_pairs(data, val_key, path, base, subjects, caller, labels_dir="labels")
    test = _json_pairs(data, "registration_test", path, base, subjects, caller, labels_dir="labels")
    return {"training": training, "validation": validation, "test": test}


def read_lumir(root: str | os.PathLike, json_name: str = "LUMIR_dataset.json") -> dict[str, list[dict[str, str]]]:
    """LUMIR: ``{"training": subjects (images only), "validation": pairs, "test": pairs}``.

    Raises:
        DatasetLayoutError: missing/invalid JSON, missing ``training`` key, malformed entries, missing files.
    """
    caller = "read_lumir"
    base, path, data, training, subjects = _json_layout(root, json_name, caller, with_labels=False)
    return {
        "training": training,
        "validation": _json_pairs(data, "validation", path, base, subjects, caller),
        "test": _json_pairs(data, "test", path, base, subjects, caller),
    }


def lumir_datalist(root: str | os.PathLike, json_name: str = "LUMIR_dataset.json") -> tuple[dict[str, Any], list[str]]:
    """A project datalist of a LUMIR copy (absolute paths, images only) and notes on empty sections.

    "training_subjects" holds ``{"id", "image"}`` (id = the 4-digit case id of ``LUMIRMRI_3455_0000.nii.gz``, see
    :func:`common.io.l2r.l2r_case_id`); "validation" and "test" hold pairs ``{"id", "moving_id", "fixed_id",
    "moving_image", "fixed_image"}`` (empty lists when the JSON has none).

    Raises:
        DatasetLayoutError: as :func:`read_lumir`, and two images with the same case id.
    """
    from common.io.l2r import l2r_case_id

    base = Path(root).resolve()
    layout = read_lumir(base, json_name)
    subjects, owner = [], {}
    for item in layout["training"]:
        sid = l2r_case_id(item["image"])
        if sid in owner:
            raise DatasetLayoutError(
                f"lumir: {base / json_name}: {owner[sid]} and {item['image']} share case id {sid!r}."
            )
        owner[sid] = item["image"]
        subjects.append({"id": sid, "image": item["image"]})
    datalist: dict[str, Any] = {
        "description": f"LUMIR brain T1s listed from {base / json_name} (absolute paths, images only).",
        "training_subjects": subjects,
    }
    notes = []
    for split in ("validation", "test"):
        pairs = []
        for p in layout[split]:
            mid, fid = l2r_case_id(p["moving_image"]), l2r_case_id(p["fixed_image"])
            pairs.append({"id": f"{mid}_to_{fid}", "moving_id": mid, "fixed_id": fid,
                          "moving_image": p["moving_image"], "fixed_image": p["fixed_image"]})  # fmt: skip
        datalist[split] = pairs
        if not pairs:
            notes.append(f"no {split!r} pairs in {json_name}: wrote an empty list")
    return datalist, notes


def read_image_label_folder(
    image_dir: str | os.PathLike,
    image_glob: str = "*.nii.gz",
    label_dir: str | os.PathLike | None = None,
    label_template: str | None = None,
    id_regex: str | None = None,
    require_labels: bool = True,
) -> list[dict[str, str]]:
    """Subjects of a folder of images (+ labels), e.g. IXI, LPBA40 or Mindboggle copies.

    Args:
        image_dir: folder of images; ``image_glob`` selects them (``"*_T1.nii.gz"``, ``"S*/*.img"``).
        label_dir: folder of label maps (default ``image_dir``).
        label_template: label file name built from the subject id, e.g. ``"{id}.delineation.structure.label.nii.gz"``
            (LPBA40) or ``"{id}_labels.nii.gz"``; None: images only.
        id_regex: regex applied to the image file name; its first group is the subject id (default: the
            file name without extension).
        require_labels: raise if a label file is missing (else the subject is listed without ``label``).

    Raises:
        DatasetLayoutError: no image matched, id regex does not match, duplicate ids, missing label.
    """
    caller = "read_image_label_folder"
    base = Path(image_dir)
    images = sorted(p for p in base.glob(image_glob) if p.is_file())
    if not images:
        raise DatasetLayoutError(f"{caller}: {base}: no image matches {image_glob!r}.")
    lab_base = Path(label_dir) if label_dir is not None else base
    items, seen = [], set()
    for img in images:
        sid = _case_id(str(img))
        if id_regex is not None:
            m = re.search(id_regex, img.name)
            if m is None:
                raise DatasetLayoutError(f"{caller}: {img}: file name does not match id_regex {id_regex!r}.")
            sid = m.group(1) if m.groups() else m.group(0)
        if sid in seen:
            raise DatasetLayoutError(f"{caller}: {img}: subject id {sid!r} appears twice; refine id_regex.")
        seen.add(sid)
        item = {"id": sid, "image": str(img)}
        if label_template is not None:
            lab = lab_base / label_template.format(id=sid)
            if lab.resolve() == img.resolve():
                raise DatasetLayoutError(f"{caller}: {img}: label_template gives the image itself.")
            if lab.is_file():
                item["label"] = str(lab)
            elif require_labels:
                raise DatasetLayoutError(f"{caller}: {lab}: label map for subject {sid!r} not found.")
        items.append(item)
    return items


def read_datalist(path: str | os.PathLike, split: str = "training") -> list[dict[str, Any]]:
    """One split of a project datalist JSON, relative paths resolved against the JSON's folder.

    Raises:
        DatasetLayoutError: missing/invalid JSON, missing split, or a referenced file that does not exist.
    """
    caller = "read_datalist"
    p = Path(path)
    data = _load_json(p, caller)
    entries = _entries(data, split, p, caller, ())
    out = []
    for i, entry in enumerate(entries):
        item: dict[str, Any] = {}
        for key, value in entry.items():
            if isinstance(value, str) and (key in ("image", "label") or key.endswith(("_image", "_label"))):
                full = _resolve(p.parent, value, p, caller)
                item[key] = _existing(full, f"{split}[{i}].{key} of {p.name}", caller)
            else:
                item[key] = value
        out.append(item)
    return out
