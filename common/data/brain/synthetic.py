"""Synthetic brain data from the 20 SynthSeg label maps: subject splits, cached template alignment, held-out pairs.

Split (by label map = by subject): maps 1-16 train, 17-18 validation, 19-20 test. Maps 17-20 are
NEVER used for training: :func:`split_label_maps` puts them only in validation/test and
:func:`check_no_held_out` refuses any training list that contains one (datasets call it).

Pipeline per map: native 256^3 label map -> affine to the template (:func:`common.data.brain.align.affine_align`
in label mode, computed once and cached as an ITK ``.tfm``) -> FreeSurfer-coded label maps on the 1 mm
(160x192x224) and 2 mm (80x96x112) template grids. Training images are synthesised on the fly from
these maps (:func:`common.transforms.brain_synthesis.synth_brain_transforms`); validation/test use a fixed set of
synthetic pairs written once by :func:`synthesize_pair`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from common.data.brain.labels import remap_to_eval
from common.data.brain.template import (
    TEMPLATE_GRID_1MM,
    TEMPLATE_GRID_2MM,
    downsample_image_2x,
    downsample_labels_2x,
)
from common.geometry import resample_array
from common.io.nifti import ImageReadError, atomic_path, read_nifti, write_nifti

__all__ = [
    "LABEL_MAP_GLOB",
    "TRAIN_IDS",
    "VALIDATION_IDS",
    "TEST_IDS",
    "HELD_OUT_IDS",
    "label_map_id",
    "list_label_maps",
    "split_label_maps",
    "check_no_held_out",
    "align_label_map",
    "synthesize_pair",
    "downsample_pair",
    "write_unit_image",
    "training_transforms",
    "evaluation_transforms",
]

LABEL_MAP_GLOB = "training_seg_*.nii.gz"
TRAIN_IDS: tuple[int, ...] = tuple(range(1, 17))
VALIDATION_IDS: tuple[int, ...] = (17, 18)
TEST_IDS: tuple[int, ...] = (19, 20)
HELD_OUT_IDS: frozenset[int] = frozenset(VALIDATION_IDS + TEST_IDS)
_ID_RE = re.compile(r"(?:training_)?seg_(\d+)")


def label_map_id(name: str | os.PathLike) -> int:
    """Number of a label map from its file name or id (``training_seg_07.nii.gz`` or ``seg_07`` -> 7)."""
    m = _ID_RE.search(Path(str(name)).name)
    if m is None:
        raise ValueError(f"label_map_id: cannot read a map number from {str(name)!r} (expected 'seg_NN').")
    return int(m.group(1))


def list_label_maps(folder: str | os.PathLike, pattern: str = LABEL_MAP_GLOB) -> list[dict[str, str]]:
    """``[{"id": "seg_01", "label": path}, ...]`` for the label maps in ``folder``, sorted by number.

    Raises:
        FileNotFoundError: ``folder`` is missing or holds no file matching ``pattern``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"list_label_maps: {root}: folder not found.")
    files = sorted(root.glob(pattern), key=label_map_id)
    if not files:
        raise FileNotFoundError(f"list_label_maps: {root}: no file matches {pattern!r}.")
    return [{"id": f"seg_{label_map_id(f):02d}", "label": str(f)} for f in files]


def split_label_maps(items: Sequence[dict]) -> dict[str, list[dict]]:
    """Split label-map items by subject: ``training`` (1-16), ``validation`` (17-18), ``test`` (19-20)."""
    out: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    for item in items:
        n = label_map_id(item["id"])
        key = "validation" if n in VALIDATION_IDS else "test" if n in TEST_IDS else "training"
        out[key].append(item)
    check_no_held_out(out["training"])
    return out


def check_no_held_out(items: Iterable[dict], keys: Sequence[str] = ("id", "label", "moving_id", "fixed_id")) -> None:
    """Raise ``ValueError`` if any training item refers to a held-out label map (17-20)."""
    for item in items:
        for key in keys:
            value = item.get(key)
            if value is None:
                continue
            m = _ID_RE.search(Path(str(value)).name)
            if m and int(m.group(1)) in HELD_OUT_IDS:
                raise ValueError(
                    f"check_no_held_out: training item uses held-out label map {int(m.group(1))} ({key}={value!r}); "
                    f"maps {sorted(HELD_OUT_IDS)} are reserved for validation/test."
                )


def align_label_map(
    path: str | os.PathLike,
    template_image: str | os.PathLike,
    out_dir: str | os.PathLike,
    template_labels: str | os.PathLike | None = None,
    force: bool = False,
    **align_kwargs,
) -> dict[str, object]:
    """Align one native label map to the template (cached) and write it on the 1 mm and 2 mm grids.

    Writes ``<out_dir>/transforms/<id>.tfm`` (ITK, template -> native, LPS) and ``<id>_world.txt`` (4x4, RAS),
    ``<out_dir>/labels_1mm/<id>.nii.gz`` and ``labels_2mm/<id>.nii.gz`` (uint16 FreeSurfer codes). A cached
    transform is reused (no registration) unless ``force``; finished outputs are skipped.

    Args:
        path: native label map.
        template_image: template T1 (the 2 mm template is as accurate for an affine and ~5x faster).
        template_labels: template atlas on the same grid; when given the registration is label-to-label
            (pseudo-T1 of both label maps), which aligns atrophied brains better (see ``affine_align``).
        align_kwargs: passed to ``affine_align``.

    Returns:
        ``{"id", "label_1mm", "label_2mm", "transform", "seconds", "cached"}``.
    """
    from common.data.brain.align import affine_align

    name = f"seg_{label_map_id(path):02d}"
    out = Path(out_dir)
    tfm, world_txt = out / "transforms" / f"{name}.tfm", out / "transforms" / f"{name}_world.txt"
    l1, l2 = out / "labels_1mm" / f"{name}.nii.gz", out / "labels_2mm" / f"{name}.nii.gz"
    result = {"id": name, "label_1mm": l1, "label_2mm": l2, "transform": tfm, "seconds": 0.0, "cached": True}
    if not force and l1.is_file() and l2.is_file() and world_txt.is_file():
        return result
    labels, affine = read_nifti(path, ndim=3, dtype=None)
    codes = np.rint(labels).astype(np.int64)
    if not np.array_equal(codes, labels) or codes.min() < 0:
        raise ImageReadError(f"{path}: not a label map (non-integer or negative values).")
    if not (codes > 0).any():
        raise ImageReadError(f"{path}: label map is empty (all background).")
    if force or not world_txt.is_file():
        res = affine_align(
            (codes.astype(np.int32), affine),
            template_image,
            template_labels=template_labels,
            mode="labels",
            **align_kwargs,
        )
        import itk

        tfm.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(tfm) as tmp:
            itk.transformwrite([res.transform], str(tmp))
        with atomic_path(world_txt) as tmp:
            np.savetxt(tmp, res.world, fmt="%.8f")
        world, result["seconds"], result["cached"] = res.world, res.seconds, False
    else:
        world = np.loadtxt(world_txt)
    on_grid = resample_array(codes.astype(np.uint16), affine, TEMPLATE_GRID_1MM, order=0, world=world)
    write_nifti(on_grid, TEMPLATE_GRID_1MM.affine, l1, dtype=np.uint16)
    write_nifti(downsample_labels_2x(on_grid), TEMPLATE_GRID_2MM.affine, l2, dtype=np.uint16)
    return result


def synthesize_pair(
    moving_labels: np.ndarray,
    fixed_labels: np.ndarray,
    seed: int,
    spacing: float = 1.0,
    contrast: str = "t1",
    deform_kwargs: dict | None = None,
) -> dict[str, np.ndarray]:
    """One reproducible synthetic pair from two FreeSurfer-coded label maps on the same grid.

    Each map is deformed and synthesised independently (its own random draw from ``seed``).

    Returns:
        ``moving_image``/``fixed_image`` (float32, [0, 1], background 0) and ``moving_label``/``fixed_label``
        (uint16 FreeSurfer codes of the evaluation set).
    """
    from common.transforms.brain_synthesis import synth_brain_transforms

    out: dict[str, np.ndarray] = {}
    for i, (role, lab) in enumerate((("moving", moving_labels), ("fixed", fixed_labels))):
        chain = synth_brain_transforms(
            f"{role}_label",
            f"{role}_image",
            contrast=contrast,
            spacing=spacing,
            remap=False,
            deform_kwargs=deform_kwargs,
        )
        chain.set_random_state(seed=int(seed) * 2 + i)
        d = chain({f"{role}_label": torch.as_tensor(np.asarray(lab, dtype=np.float32))[None]})
        out[f"{role}_image"] = np.clip(d[f"{role}_image"][0].numpy(), 0, 1).astype(np.float32)
        out[f"{role}_label"] = remap_to_eval(d[f"{role}_label"][0].numpy(), consecutive=False)
    return out


def downsample_pair(pair: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """1 mm pair -> 2 mm pair on the template grids (images: block mean, labels: block majority)."""
    return {
        k: downsample_labels_2x(v) if k.endswith("label") else downsample_image_2x(v).astype(np.float32)
        for k, v in pair.items()
    }


def write_unit_image(image: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a [0, 1] image as uint8 with ``scl_slope = 1/255`` (atomic).

    Readers (nibabel, MONAI ``LoadImage``) return float values ``k / 255``; the quantisation step 1/255 is
    the one of the real OASIS scans, and files are ~3x smaller than float32 for noisy synthetic images.
    """
    arr = np.asarray(image, dtype=np.float64)
    if arr.size and (arr.min() < 0 or arr.max() > 1 or not np.isfinite(arr).all()):
        raise ValueError(f"write_unit_image: values must lie in [0, 1] ({path}), got [{arr.min()}, {arr.max()}].")
    img = nib.Nifti1Image(np.rint(arr * 255).astype(np.uint8), np.asarray(affine, dtype=np.float64))
    img.header.set_slope_inter(1.0 / 255.0, 0.0)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def training_transforms(
    spacing: float = 2.0, contrast: str = "t1", roi_size: Sequence[int] | None = None, deform_kwargs: dict | None = None
):
    """MONAI pipeline for a training entry ``{"moving_label", "fixed_label"}`` of ``brain/datalist_*mm.json``.

    Loads both FreeSurfer-coded maps, synthesises each side independently (deformation, T1-like or random
    contrast, bias, blur, gamma, noise), remaps labels to consecutive evaluation indices, optionally crops the
    same random patch from all four arrays, and stacks ``image = [moving_image, fixed_image]``.

    Args:
        spacing: mm per voxel of the datalist's grid (2 for ``datalist_2mm.json``).
        contrast: ``"t1"`` or ``"random"``. roi_size: optional patch size (same location for all keys).
    """
    from monai.transforms import Compose, LoadImaged

    from common.transforms.brain_synthesis import synth_brain_transforms
    from common.transforms.pairs import StackPaird, paired_random_crop

    chain: list = [LoadImaged(["moving_label", "fixed_label"], image_only=True, ensure_channel_first=True)]
    for role in ("moving", "fixed"):
        chain.append(
            synth_brain_transforms(
                f"{role}_label", f"{role}_image", contrast=contrast, spacing=spacing, deform_kwargs=deform_kwargs
            )
        )
    if roi_size is not None:
        chain.append(paired_random_crop(roi_size))
    chain.append(StackPaird())
    return Compose(chain)


def evaluation_transforms():
    """MONAI pipeline for a validation/test entry: load the fixed synthetic pair, remap labels, stack ``image``."""
    from monai.transforms import Compose, LoadImaged

    from common.transforms.brain import RemapLabelsd
    from common.transforms.pairs import PAIR_KEYS, StackPaird

    return Compose(
        [
            LoadImaged(list(PAIR_KEYS), image_only=True, ensure_channel_first=True),
            RemapLabelsd(["moving_label", "fixed_label"]),
            StackPaird(),
        ]
    )
