"""One call that scores a registration the Learn2Reg way: overlap, surface distance and regularity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from common.metrics._validation import ddf_array, label_array, same_shape, squeeze_leading
from common.metrics.jacobian import ndv, percent_folding, sdlogj
from common.metrics.overlap import dice_per_label
from common.metrics.surface import hd95

__all__ = ["evaluate_registration"]


def evaluate_registration(
    ddf: Any,
    warped_labels: Any,
    fixed_labels: Any,
    spacing: float | Sequence[float] | None = None,
    labels: Sequence[int] | None = None,
    *,
    moving_labels: Any = None,
    mask: Any = None,
    hd_percentile: float = 95.0,
) -> dict[str, Any]:
    """Dice, HD95, SDlogJ, NDV and % folding for one registered pair.

    Args:
        ddf: displacement in voxels on the fixed grid, ``(D, *S)`` or ``(1, D, *S)``.
        warped_labels: moving labels warped onto the fixed grid (nearest neighbour), shape ``S``
            (leading singleton axes allowed).
        fixed_labels: fixed labels, shape ``S``.
        spacing: fixed voxel size in mm per axis (array order); ``None`` for 1 mm.
        labels: codes to score; ``None``: non-zero codes present in either map.
        moving_labels: unwarped moving labels; if given, the Learn2Reg presence test (label in fixed
            *and* moving) decides which labels are skipped, otherwise the warped labels are used.
        mask: region for NDV and % folding (e.g. the fixed brain mask), shape ``S``; default all voxels.
        hd_percentile: percentile of the robust Hausdorff distance.

    Returns:
        ``{"dice_mean", "dice_per_label", "dice_skipped", "hd95_mean", "hd95_per_label", "sdlogj",
        "ndv_percent", "folding_percent"}``: floats (``nan`` when nothing could be scored), per-label
        dicts ``{code: value}`` and the sorted list of skipped codes.
    """
    caller = "evaluate_registration"
    u = ddf_array(ddf, caller)
    dims, shape = u.shape[0], u.shape[1:]
    warped = squeeze_leading(label_array(warped_labels, "warped_labels", caller), dims, "warped_labels", caller)
    fixed = squeeze_leading(label_array(fixed_labels, "fixed_labels", caller), dims, "fixed_labels", caller)
    same_shape(warped, fixed, "warped_labels", "fixed_labels", caller)
    if warped.shape != tuple(shape):
        raise ValueError(f"{caller}: `warped_labels` has shape {warped.shape} but `ddf` has grid {tuple(shape)}.")
    dice, skipped = dice_per_label(warped, fixed, labels, moving=moving_labels, return_skipped=True)
    hd = hd95(warped, fixed, labels, spacing, percentile=hd_percentile, moving=moving_labels)
    hd_finite = [v for v in hd.values() if np.isfinite(v)]
    return {
        "dice_mean": float(np.mean(list(dice.values()))) if dice else float("nan"),
        "dice_per_label": dice,
        "dice_skipped": skipped,
        "hd95_mean": float(np.mean(hd_finite)) if hd_finite else float("nan"),
        "hd95_per_label": hd,
        "sdlogj": sdlogj(u) if min(shape) > 4 else float("nan"),
        "ndv_percent": ndv(u, mask),
        "folding_percent": percent_folding(u, mask),
    }
