"""The four real OASIS-1 T1 scans (and the 13-structure labels of subject A) used for real-image checks.

Files (``brain_t1_oasis/`` on developer machines, see ``data/README.md``): subjects A and B at 256^3
(native FreeSurfer-conformed space), C and D as 160x192x224 neurite-OASIS crops; ``oasis_a_seg13_onehot``
is a 13-channel one-hot of 13 structures of the OASIS 35-label segmentation for A. The shipped demo pair
(``data/demo/moving_t1.nii.gz`` = C, ``fixed_t1.nii.gz`` = D) is all a user of the product has.

Source: OASIS-1 (Marcus et al., J Cogn Neurosci 2007) as redistributed in the MIT-licensed repositories
cwmok/C2FViT and cwmok/Conditional_LapIRN; OASIS terms ask users to acknowledge OASIS.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.io.nifti import ImageReadError, read_nifti

__all__ = [
    "OASIS_T1_FILES",
    "OASIS_A_SEG13",
    "OASIS13_STRUCTURES",
    "merge_to_oasis13",
    "REPO_ROOT",
    "default_oasis_dir",
    "demo_pair",
    "list_oasis_t1",
    "load_onehot_labels",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
OASIS_T1_FILES: dict[str, str] = {
    "oasis_a": "oasis_a_t1.nii.gz",
    "oasis_b": "oasis_b_t1.nii.gz",
    "oasis_c": "oasis_c_t1_160x192x224.nii.gz",
    "oasis_d": "oasis_d_t1_160x192x224.nii.gz",
}
OASIS_A_SEG13 = "oasis_a_seg13_onehot.nii.gz"

# Subject A's 13 structures (channel k - 1 of the one-hot = label k): left and right merged, no cerebral white
# matter. Identified from their overlap with the template's IBSR atlas after affine alignment (every label's
# largest overlaps are the left and right copies of one FreeSurfer structure; `prepare_data.py oasis_template`
# prints that overlap check) -> the FreeSurfer codes each one merges.
OASIS13_STRUCTURES: dict[int, tuple[str, tuple[int, ...]]] = {
    1: ("thalamus", (10, 49)),
    2: ("cerebellum cortex", (8, 47)),
    3: ("lateral ventricle", (4, 43)),
    4: ("cerebellum white matter", (7, 46)),
    5: ("putamen", (12, 51)),
    6: ("caudate", (11, 50)),
    7: ("pallidum", (13, 52)),
    8: ("hippocampus", (17, 53)),
    9: ("amygdala", (18, 54)),
    10: ("cerebral cortex", (3, 42)),
    11: ("3rd ventricle", (14,)),
    12: ("4th ventricle", (15,)),
    13: ("brain stem", (16,)),
}


def merge_to_oasis13(freesurfer_labels: np.ndarray) -> np.ndarray:
    """A FreeSurfer-coded label map -> subject A's 13 merged structures (uint8, 0 = everything else)."""
    labels = np.rint(np.asarray(freesurfer_labels)).astype(np.int64)
    out = np.zeros(labels.shape, dtype=np.uint8)
    for k, (_, codes) in OASIS13_STRUCTURES.items():
        out[np.isin(labels, codes)] = k
    return out


def default_oasis_dir() -> Path:
    """``$OASIS_T1_DIR`` if set, else ``<repo>/../shared/data/brain_t1_oasis`` (developer machines only)."""
    env = os.environ.get("OASIS_T1_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "brain_t1_oasis"


def demo_pair(folder: str | os.PathLike | None = None) -> dict[str, str]:
    """The shipped real demo pair ``{"moving_image", "fixed_image", "id"}`` (OASIS C -> D, 160x192x224 LIA).

    Raises:
        FileNotFoundError: a file is missing (names it).
    """
    root = Path(folder) if folder is not None else REPO_ROOT / "data" / "demo"
    pair = {"moving_image": str(root / "moving_t1.nii.gz"), "fixed_image": str(root / "fixed_t1.nii.gz")}
    for p in pair.values():
        if not Path(p).is_file():
            raise FileNotFoundError(f"demo_pair: {p}: file not found (the demo pair ships in data/demo/).")
    return {**pair, "id": "oasis_c_to_oasis_d"}


def list_oasis_t1(folder: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """``[{"id", "image"[, "label_onehot"]}]`` for the four real T1s in ``folder``.

    Args:
        folder: folder holding the files of :data:`OASIS_T1_FILES` (default :func:`default_oasis_dir`).

    Raises:
        FileNotFoundError: the folder or one of the four T1 files is missing (names it).
    """
    root = Path(folder) if folder is not None else default_oasis_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"list_oasis_t1: {root}: folder not found (set OASIS_T1_DIR or pass the folder).")
    items = []
    for sid, name in OASIS_T1_FILES.items():
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"list_oasis_t1: {path}: file not found.")
        item = {"id": sid, "image": str(path)}
        if sid == "oasis_a" and (root / OASIS_A_SEG13).is_file():
            item["label_onehot"] = str(root / OASIS_A_SEG13)
        items.append(item)
    return items


def load_onehot_labels(path: str | os.PathLike, image_path: str | os.PathLike | None = None) -> np.ndarray:
    """Read a channels-last one-hot NIfTI ``(*S, K)`` as a label map ``(*S)`` with values ``0..K``.

    Voxels with no channel set are background 0; channel ``k`` becomes label ``k + 1``.

    Raises:
        ImageReadError: unreadable file, not 4D, values other than 0/1, overlapping channels, or (with
            ``image_path``) a grid differing from the image's.
    """
    onehot, affine = read_nifti(path, ndim=4, dtype=np.uint8)
    if onehot.max() > 1:
        raise ImageReadError(f"{path}: not a one-hot map (values up to {int(onehot.max())}).")
    total = onehot.sum(axis=-1, dtype=np.int32)
    if total.max() > 1:
        raise ImageReadError(f"{path}: {int((total > 1).sum())} voxels belong to more than one channel.")
    if image_path is not None:
        image, image_affine = read_nifti(image_path, ndim=3)
        if image.shape != onehot.shape[:3] or not np.allclose(image_affine, affine, atol=1e-3):
            raise ImageReadError(
                f"{path}: label grid {onehot.shape[:3]} does not match the image {image_path} {image.shape}."
            )
    return np.where(total > 0, onehot.argmax(axis=-1) + 1, 0).astype(np.uint8)
