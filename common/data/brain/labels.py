"""Brain label sets: the evaluation labels, how raw FreeSurfer codes map onto them, and T1 synthesis classes.

The 20 shared label maps (SynthSeg ``training_label_maps``) carry 53 FreeSurfer-style codes: the 32 brain
structures of SynthSeg's ``labels_table.txt`` plus small intra-cerebral extras (lesions 25/57, vessels 30/62,
5th ventricle 72, optic chiasm 85, ventricle sub-parts 136/137/163/164) and extra-cerebral tissue
(502-530). Evaluation uses :data:`BRAIN_EVAL_LABELS` only; the extras are kept for image synthesis and
folded into their parent structure (or background) by :func:`remap_to_eval`.

Two codings exist for the evaluation labels:

* FreeSurfer codes (files on disk, the template atlas, the datalists);
* consecutive indices ``0..32`` (index ``i`` = ``i``-th entry of :data:`BRAIN_EVAL_LABELS` plus one,
  0 = background) for one-hot losses and Dice: :func:`remap_to_eval` produces them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "BRAIN_EVAL_LABELS",
    "BRAIN_EVAL_CODES",
    "EXTRA_CEREBRAL_CODES",
    "EVAL_MERGE",
    "T1_PRIOR_CLASS",
    "T1_PRIOR_MEANS",
    "T1_PRIOR_STDS",
    "eval_lookup_table",
    "remap_to_eval",
    "read_labels_table",
    "load_t1_priors",
]

# FreeSurfer code -> name, exactly the 32 structures (background excluded) of SynthSeg's labels_table.txt,
# in ascending code order (the order of the consecutive indices 1..32).
BRAIN_EVAL_LABELS: dict[int, str] = {
    2: "left cerebral white matter",
    3: "left cerebral cortex",
    4: "left lateral ventricle",
    5: "left inferior lateral ventricle",
    7: "left cerebellum white matter",
    8: "left cerebellum cortex",
    10: "left thalamus",
    11: "left caudate",
    12: "left putamen",
    13: "left pallidum",
    14: "3rd ventricle",
    15: "4th ventricle",
    16: "brain-stem",
    17: "left hippocampus",
    18: "left amygdala",
    24: "CSF",
    26: "left accumbens area",
    28: "left ventral DC",
    41: "right cerebral white matter",
    42: "right cerebral cortex",
    43: "right lateral ventricle",
    44: "right inferior lateral ventricle",
    46: "right cerebellum white matter",
    47: "right cerebellum cortex",
    49: "right thalamus",
    50: "right caudate",
    51: "right putamen",
    52: "right pallidum",
    53: "right hippocampus",
    54: "right amygdala",
    58: "right accumbens area",
    60: "right ventral DC",
}
BRAIN_EVAL_CODES: tuple[int, ...] = tuple(BRAIN_EVAL_LABELS)

# Small non-evaluation labels inside the brain, folded into the structure that surrounds them (neighbours
# measured on training_seg_01): WM lesions and vessels into white matter, ventricle sub-parts into the
# ventricle they touch, the 5th ventricle (cavum septi) into the lateral ventricle. Everything else that is
# not an evaluation label (extra-cerebral tissue, optic chiasm) becomes background.
EVAL_MERGE: dict[int, int] = {25: 2, 57: 41, 30: 2, 62: 41, 72: 4, 136: 4, 137: 5, 163: 43, 164: 44}

# Extra-cerebral codes of the SynthSeg label maps (skull, scalp, eyes, ...): used for synthesis only and
# removed when synthesising skull-stripped images.
EXTRA_CEREBRAL_CODES: tuple[int, ...] = (502, 506, 507, 508, 509, 511, 512, 514, 515, 516, 530)

# FreeSurfer code -> column of SynthSeg's prior_means_t1.npy / prior_stds_t1.npy (25 classes).
# SynthSeg pairs these priors with ``generation_classes_contrast_specific.npy``, which is NOT among the shared
# files; this table is our own assignment, chosen from anatomy so that the prior means follow the known T1
# ordering (white matter 160 > pallidum 152 > brain-stem/thalamus 130-136 > putamen 124 > caudate 116 >
# cortex 96 > hippocampus/amygdala 87-88 > CSF 44-48 > background 7). The columns with very wide spreads
# (14, 16, 17, 19, 23, 24) go to extra-cerebral tissue.
T1_PRIOR_CLASS: dict[int, int] = {
    0: 0,
    # cerebrospinal fluid and ventricles
    4: 1, 5: 1, 43: 1, 44: 1, 14: 1, 15: 1, 72: 1, 136: 1, 137: 1, 163: 1, 164: 1, 24: 21,
    # white matter
    2: 2, 41: 2, 85: 2,
    # grey matter
    3: 3, 42: 3, 8: 3, 47: 3,
    10: 4, 49: 4,  # thalamus
    17: 5, 53: 5,  # hippocampus
    28: 6, 60: 6,  # ventral DC
    12: 7, 51: 7,  # putamen
    13: 8, 52: 8,  # pallidum
    7: 9, 46: 9,  # cerebellum white matter
    11: 10, 50: 10, 26: 10, 58: 10,  # caudate, accumbens
    18: 11, 54: 11,  # amygdala
    25: 12, 57: 12,  # lesions (T1-hypointense)
    16: 13,  # brain-stem
    30: 18, 62: 18,  # vessels
    # extra-cerebral tissue
    507: 14, 512: 15, 509: 16, 511: 17, 514: 20, 515: 19, 502: 20, 506: 23, 508: 22, 516: 24, 530: 12,
}  # fmt: skip

# SynthSeg's prior_means_t1.npy and prior_stds_t1.npy (BBillot/SynthSeg, data/labels_classes_priors/,
# Apache License 2.0), rounded to 4 decimals and embedded so that synthesis needs no external file.
# Row 0: mean, row 1: standard deviation of a normal prior over the class mean (resp. class std), 0-255 scale.
T1_PRIOR_MEANS = np.array([
    [7.0000, 44.4385, 160.2938, 96.2953, 135.9521, 88.1551, 129.5239, 124.0547, 151.7995, 142.5328, 116.1047,
     86.8343, 59.6285, 129.7850, 126.3770, 18.1170, 93.9053, 117.1349, 69.9129, 113.7339, 68.2363, 48.4267,
     30.1985, 94.2427, 144.4557],
    [1.7500, 11.2100, 21.6558, 12.1783, 13.4112, 10.5597, 17.6854, 15.7277, 19.5107, 16.0573, 14.8218, 17.4751,
     10.4087, 12.2352, 24.7973, 3.8432, 9.1290, 11.6669, 9.2494, 12.4180, 11.0955, 8.5655, 6.8607, 18.3200,
     16.3185],
])  # fmt: skip
T1_PRIOR_STDS = np.array([
    [5.0000, 25.5656, 15.6322, 18.9183, 15.3401, 17.0927, 19.5886, 13.8059, 8.5567, 21.1277, 19.4568, 17.1667,
     23.6540, 17.5332, 83.9518, 13.8599, 48.6015, 64.7909, 25.4654, 74.8660, 35.8570, 19.9200, 22.0240,
     43.3206, 44.6736],
    [2.5000, 9.8408, 5.4767, 6.3053, 5.6614, 5.4919, 7.7736, 7.1456, 4.0714, 6.9511, 7.1694, 8.5084, 11.0832,
     6.7843, 49.3672, 7.4399, 12.5566, 28.5150, 13.1353, 20.4665, 18.3541, 8.9994, 11.5986, 20.1360, 26.2114],
])  # fmt: skip


def eval_lookup_table(max_code: int = 1023, consecutive: bool = True) -> np.ndarray:
    """Lookup table ``lut[code]`` -> evaluation label (consecutive index, or FreeSurfer code if not ``consecutive``).

    Codes not in :data:`BRAIN_EVAL_LABELS` or :data:`EVAL_MERGE` map to 0.
    """
    lut = np.zeros(max_code + 1, dtype=np.int64)
    index = {code: i + 1 for i, code in enumerate(BRAIN_EVAL_CODES)}
    for code in BRAIN_EVAL_CODES:
        lut[code] = index[code] if consecutive else code
    for code, parent in EVAL_MERGE.items():
        lut[code] = index[parent] if consecutive else parent
    return lut


def remap_to_eval(labels: np.ndarray, consecutive: bool = True) -> np.ndarray:
    """Map raw FreeSurfer codes to the evaluation label set.

    Args:
        labels: integer-valued array of FreeSurfer codes (any shape).
        consecutive: return indices ``0..32`` (default) or FreeSurfer codes restricted to the evaluation set.

    Raises:
        ValueError: negative or non-integer values.
    """
    arr = np.asarray(labels)
    if arr.size == 0:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr)):
        raise ValueError("remap_to_eval: `labels` holds non-integer values; pass a label map, not an image.")
    codes = arr.astype(np.int64)
    if codes.min() < 0:
        raise ValueError(f"remap_to_eval: `labels` holds negative codes (min {int(codes.min())}).")
    lut = eval_lookup_table(max(int(codes.max()), 1023), consecutive)
    out = lut[codes]
    return out.astype(np.uint8) if consecutive else out.astype(np.uint16)


def read_labels_table(path: str | os.PathLike) -> dict[int, str]:
    """Parse SynthSeg's ``labels_table.txt`` (``<code> <name>`` lines after a ``labels structures`` header).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: no ``labels`` header or no entries (the message names the file).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"read_labels_table: {p}: file not found.")
    lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().lower().startswith("labels")), None)
    if start is None:
        raise ValueError(f"read_labels_table: {p}: no 'labels  structures' header line.")
    table: dict[int, str] = {}
    for line in lines[start + 1 :]:
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            table[int(parts[0])] = parts[1].strip()
    if not table:
        raise ValueError(f"read_labels_table: {p}: no '<code> <name>' entries after the header.")
    return table


def load_t1_priors(folder: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load SynthSeg's T1 priors ``prior_means_t1.npy`` and ``prior_stds_t1.npy`` (each ``(2, 25)``).

    With ``folder=None`` the embedded copies :data:`T1_PRIOR_MEANS`, :data:`T1_PRIOR_STDS` are returned.

    Row 0 is the mean and row 1 the standard deviation of a normal prior over the class mean (resp. the
    class standard deviation), intensities on a 0-255 scale.

    Raises:
        FileNotFoundError: a file is missing. ValueError: wrong shape (the message names the file).
    """
    if folder is None:
        return T1_PRIOR_MEANS.copy(), T1_PRIOR_STDS.copy()
    out = []
    for name in ("prior_means_t1.npy", "prior_stds_t1.npy"):
        p = Path(folder) / name
        if not p.is_file():
            raise FileNotFoundError(f"load_t1_priors: {p}: file not found.")
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as exc:
            raise ValueError(f"load_t1_priors: {p}: not a readable .npy file ({exc}).") from exc
        n_classes = max(T1_PRIOR_CLASS.values()) + 1
        if arr.shape != (2, n_classes):
            raise ValueError(f"load_t1_priors: {p}: expected shape (2, {n_classes}), got {arr.shape}.")
        out.append(arr.astype(np.float64))
    return out[0], out[1]
