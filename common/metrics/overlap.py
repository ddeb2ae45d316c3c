"""Label overlap: consecutive relabelling and per-label Dice with the Learn2Reg skipping rule.

Label maps are integer arrays of any shape (2D or 3D, optionally with leading singleton batch/channel
axes), given as ``numpy.ndarray`` or ``torch.Tensor``; values are computed in NumPy. Float arrays are
accepted when they hold integer values (NIfTI label maps often load as float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
import torch

from common.metrics._validation import label_array, same_shape, scored_labels

__all__ = ["relabel_consecutive", "dice_per_label", "mean_dice", "present_labels"]


def relabel_consecutive(label_map: Any, labels: Sequence[int] | None = None) -> tuple[Any, tuple[int, ...]]:
    """Map arbitrary label codes (e.g. FreeSurfer 2, 41, 17, ...) to ``1..K``; everything else to 0.

    Args:
        label_map: integer label map of any shape, ``numpy.ndarray`` or ``torch.Tensor``.
        labels: the codes to keep, in the order that defines the new values (``labels[i] -> i + 1``).
            ``None``: all non-zero codes present, sorted ascending. Codes listed but absent from the map
            still get their slot, so several maps relabelled with the same list stay consistent.

    Returns:
        ``(remapped, labels_used)``: ``remapped`` has the input's shape and type (int64; a tensor stays
        on its device), ``labels_used[i]`` is the original code of new label ``i + 1``.

    Raises:
        ValueError: non-integer or non-finite values, a repeated or zero code in ``labels``.
    """
    caller = "relabel_consecutive"
    arr = label_array(label_map, "label_map", caller)
    if labels is None:
        codes = np.unique(arr)
        codes = codes[codes != 0]
    else:
        codes = np.asarray([int(c) for c in labels], dtype=np.int64)
        if codes.size != np.unique(codes).size:
            raise ValueError(f"{caller}: `labels` contains repeated codes: {list(codes)}.")
        if (codes == 0).any():
            raise ValueError(f"{caller}: `labels` must not contain the background code 0.")
    out = np.zeros(arr.shape, dtype=np.int64)
    if codes.size:
        order = np.argsort(codes)
        sorted_codes = codes[order]
        pos = np.clip(np.searchsorted(sorted_codes, arr), 0, codes.size - 1)
        hit = sorted_codes[pos] == arr
        out[hit] = order[pos[hit]] + 1
    used = tuple(int(c) for c in codes)
    if isinstance(label_map, torch.Tensor):
        return torch.from_numpy(out).to(label_map.device), used
    return out, used


def present_labels(*label_maps: Any) -> list[int]:
    """Sorted non-zero codes present in **every** given map (the labels Learn2Reg evaluates)."""
    common: set[int] | None = None
    for i, m in enumerate(label_maps):
        codes = set(int(c) for c in np.unique(label_array(m, f"label_maps[{i}]", "present_labels")))
        common = codes if common is None else common & codes
    return sorted(c for c in (common or set()) if c != 0)


@overload
def dice_per_label(
    pred: Any,
    ref: Any,
    labels: Sequence[int] | None = ...,
    *,
    moving: Any = ...,
    return_skipped: Literal[False] = ...,
) -> dict[int, float]: ...


@overload
def dice_per_label(
    pred: Any,
    ref: Any,
    labels: Sequence[int] | None = ...,
    *,
    moving: Any = ...,
    return_skipped: Literal[True],
) -> tuple[dict[int, float], list[int]]: ...


def dice_per_label(
    pred: Any,
    ref: Any,
    labels: Sequence[int] | None = None,
    *,
    moving: Any = None,
    return_skipped: bool = False,
) -> dict[int, float] | tuple[dict[int, float], list[int]]:
    """Dice ``2|P ∩ R| / (|P| + |R|)`` per label, skipping labels absent from either image.

    Learn2Reg rule: a label that does not occur in the fixed (``ref``) or in the moving segmentation
    is not scored (its Dice would say nothing about the registration). The official scorer checks the
    *unwarped* moving labels; pass them as ``moving`` to reproduce that exactly. Without ``moving`` the
    presence test uses ``pred`` (the warped moving labels), so a label that the registration pushed out
    of the image is skipped rather than scored 0 — pass ``moving`` when that matters.

    Args:
        pred: predicted / warped moving label map (integer codes), any shape.
        ref: reference / fixed label map, same shape as ``pred``.
        labels: codes to score; ``None``: all non-zero codes present in ``ref`` or ``pred``.
        moving: optional unwarped moving label map used for the presence test (any shape).
        return_skipped: also return the list of requested codes that were skipped.

    Returns:
        ``{code: dice}`` for the scored labels (floats in [0, 1]), and, if ``return_skipped``, the sorted
        list of skipped codes. Symmetric in ``pred`` and ``ref`` when ``moving`` is None.

    Raises:
        ValueError: shape mismatch, NaN or non-integer labels.

    References:
        Hering et al., "Learn2Reg: comprehensive multi-task medical image registration challenge,
        dataset and evaluation in the era of deep learning", IEEE TMI 42(3), 2023.
    """
    caller = "dice_per_label"
    p = label_array(pred, "pred", caller)
    r = label_array(ref, "ref", caller)
    same_shape(p, r, "pred", "ref", caller)
    presence = p if moving is None else label_array(moving, "moving", caller)
    codes, skipped = scored_labels(p, r, presence, labels)
    scores: dict[int, float] = {}
    counted = _label_counts(p, r) if codes else None
    for c in codes:
        if counted is not None:
            n_p, n_r, n_both = (int(x[c]) if c < len(x) else 0 for x in counted)
        else:
            pm, rm = p == c, r == c
            n_p, n_r, n_both = int(pm.sum()), int(rm.sum()), int(np.logical_and(pm, rm).sum())
        denom = n_p + n_r
        scores[c] = 2.0 * n_both / denom if denom else float("nan")
    if return_skipped:
        return scores, sorted(skipped)
    return scores


def _label_counts(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Voxel counts per code in ``p``, in ``r`` and where both agree (one pass each, ``np.bincount``); None when
    codes are negative or too large for a count table (then Dice counts code by code)."""
    lo = min(int(p.min(initial=0)), int(r.min(initial=0)))
    hi = max(int(p.max(initial=0)), int(r.max(initial=0)))
    if lo < 0 or hi > 1_000_000:
        return None
    n = hi + 1
    both = p[p == r]
    return np.bincount(p.ravel(), minlength=n), np.bincount(r.ravel(), minlength=n), np.bincount(both, minlength=n)


def mean_dice(pred: Any, ref: Any, labels: Sequence[int] | None = None, *, moving: Any = None) -> float:
    """Mean of :func:`dice_per_label` over the scored labels; ``nan`` when every label was skipped."""
    scores = dice_per_label(pred, ref, labels, moving=moving)
    return float(np.mean(list(scores.values()))) if scores else float("nan")
