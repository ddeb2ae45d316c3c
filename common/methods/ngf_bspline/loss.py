"""Hering et al. 2019's training pieces: B-spline control points to displacements, and the loss over every level."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from common.blocks import BSplineTransformer
from common.engines.registration import PredToDDF, RegistrationLoss

__all__ = ["BSplineToDDF", "MultiLevelRegistrationLoss"]


class BSplineToDDF(PredToDDF):
    """``pred`` holds cubic B-spline control-point displacements in voxels of the OUTPUT grid.

    Args:
        stride: control-point spacing in output voxels (the output grid is ``size``).
    """

    def __init__(self, stride: int | Sequence[int]) -> None:
        super().__init__()
        self.bspline = BSplineTransformer(stride)

    def native_shape(self, pred: torch.Tensor) -> tuple[int, ...]:
        raise ValueError("BSplineToDDF: a control-point grid is not a displacement grid; use loss_grid='input'.")

    def forward(self, pred: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.bspline(pred, size)


class MultiLevelRegistrationLoss(RegistrationLoss):
    """:class:`RegistrationLoss` summed over the levels of a multi-level prediction (deep supervision).

    ``pred`` is the list of levels, coarse to fine, as a network wrapped in
    :class:`common.methods.ngf_bspline.AllLevels` returns it (the way MONAI's ``DeepSupervisionLoss`` takes a list);
    level ``l`` is turned into a displacement by ``level_to_ddf[l]`` and weighted by ``level_weights[l]``. A single
    tensor is accepted only when there is one level: a level count that does not match is an error, never a silent
    single-level loss. Term values in :attr:`last_terms` are the weighted sums over levels; ``total`` is the loss.

    Args:
        level_to_ddf: one :class:`PredToDDF` per level (e.g. :class:`BSplineToDDF` with strides 16, 8, 4).
        level_weights: weight per level (default equal, summing to 1).
        **kwargs: the :class:`RegistrationLoss` terms and weights (``pred_to_ddf`` is set per level).
    """

    def __init__(
        self,
        level_to_ddf: Sequence[PredToDDF],
        level_weights: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("pred_to_ddf", None)
        super().__init__(pred_to_ddf=level_to_ddf[-1], **kwargs)
        self.level_to_ddf = nn.ModuleList(level_to_ddf)
        n = len(level_to_ddf)
        self.level_weights = [1.0 / n] * n if level_weights is None else [float(w) for w in level_weights]
        if len(self.level_weights) != n:
            raise ValueError(f"MultiLevelRegistrationLoss: {len(self.level_weights)} level_weights for {n} levels.")

    def forward(self, pred: torch.Tensor | Sequence[torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        levels = [pred] if isinstance(pred, torch.Tensor) else list(pred)
        if len(levels) != len(self.level_to_ddf):
            raise ValueError(
                f"MultiLevelRegistrationLoss: the prediction holds {len(levels)} level(s) for "
                f"{len(self.level_to_ddf)} level_to_ddf entries; train the network wrapped in "
                "common.methods.ngf_bspline.AllLevels, which returns every level."
            )
        pred = levels[-1]
        pairs = list(zip(self.level_to_ddf, self.level_weights))
        total = pred.new_zeros(())
        terms: dict[str, float] = {}
        for level_pred, (to_ddf, weight) in zip(levels, pairs):
            self.pred_to_ddf = to_ddf
            total = total + weight * super().forward(level_pred, targets)
            for k, v in self.last_terms.items():
                terms[k] = terms.get(k, 0.0) + weight * v
        self.pred_to_ddf = self.level_to_ddf[-1]
        terms["total"] = float(total.detach())
        self.last_terms = terms
        return total
