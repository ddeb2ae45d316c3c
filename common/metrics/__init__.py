"""Registration metrics with the Learn2Reg definitions: Dice, HD95, ASSD, SDlogJ, NDV, % folding, TRE;
global NCC of the images.

Primary type: NumPy. Every metric accepts ``numpy.ndarray`` or ``torch.Tensor`` inputs (tensors are
detached and moved to the CPU) and returns Python floats, dicts or NumPy arrays; they are evaluation
tools, not losses (no gradients). 2D and 3D. Displacement fields follow :mod:`common.conventions`
(voxels, array order, pull-back on the fixed grid) and are passed one at a time, ``(D, *S)`` or
``(1, D, *S)``; millimetres enter only through ``spacing`` (per axis, array order).
"""

from __future__ import annotations

from common.metrics.evaluate import evaluate_registration
from common.metrics.jacobian import (
    jacobian_determinant,
    ndv,
    non_diffeomorphic_volume_map,
    percent_folding,
    sdlogj,
)
from common.metrics.landmarks import tre
from common.metrics.overlap import dice_per_label, mean_dice, present_labels, relabel_consecutive
from common.metrics.similarity import global_ncc
from common.metrics.surface import assd, hd95, mean_hd95, surface_distances

__all__ = [
    "assd",
    "dice_per_label",
    "evaluate_registration",
    "global_ncc",
    "hd95",
    "jacobian_determinant",
    "mean_dice",
    "mean_hd95",
    "ndv",
    "non_diffeomorphic_volume_map",
    "percent_folding",
    "present_labels",
    "relabel_consecutive",
    "sdlogj",
    "surface_distances",
    "tre",
]
