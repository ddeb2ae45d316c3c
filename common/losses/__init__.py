"""Losses for registration: image similarity, label overlap and displacement regularisers.

A method's own loss lives in its package (e.g. Han et al.'s blurred-boundary term in
:mod:`common.methods.hybrid_loss`).

Every loss is an :class:`torch.nn.Module` returning a value to minimise, works in 2D and 3D, validates its
inputs (errors start with the class name and show the shapes) and reduces through the one helper
:func:`common.losses.reduce` (``none | mean | sum``, optional voxel-weight mask).
"""

from __future__ import annotations

from common.losses._reduction import REDUCTIONS, reduce
from common.losses.image import GlobalNCCLoss, LocalNCCLoss, NGFLoss, SSDLoss
from common.losses.labels import LabelSSDLoss, SoftDiceLoss, soft_dice
from common.losses.mind import MINDSSCLoss, mind_ssc
from common.losses.mutual_information import MutualInformationLoss
from common.losses.regularisers import (
    BendingEnergyRegulariser,
    CurvatureRegulariser,
    FoldingPenalty,
    GradientRegulariser,
)

__all__ = [
    "REDUCTIONS",
    "BendingEnergyRegulariser",
    "CurvatureRegulariser",
    "FoldingPenalty",
    "GlobalNCCLoss",
    "GradientRegulariser",
    "LabelSSDLoss",
    "LocalNCCLoss",
    "MINDSSCLoss",
    "MutualInformationLoss",
    "NGFLoss",
    "SSDLoss",
    "SoftDiceLoss",
    "reduce",
    "soft_dice",
    "mind_ssc",
]
