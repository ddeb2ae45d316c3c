"""Pieces that let MONAI's SupervisedTrainer / SupervisedEvaluator train and validate registration networks.

The network follows the bundle contract: one input tensor ``[moving, fixed]`` (2 channels) and one output
tensor ``pred`` (a displacement, or what the method predicts). Everything registration-specific lives here:

* :class:`PairPrepareBatch` stacks ``moving_image`` and ``fixed_image`` into the network input and hands the
  images and labels to the loss as a dict (``targets``);
* :class:`PredToDDF` implementations turn ``pred`` into the displacement on a requested grid;
* :class:`RegistrationLoss` warps the moving image (and one-hot labels) with that displacement and sums
  weighted image, label and regularisation terms, each a swappable config object;
* :class:`RegistrationEvalPostprocess` warps moving labels for Dice in the evaluator (``decollate=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines.utils import PrepareBatch
from torch import nn

from common.blocks import VelocityIntegrator, one_hot, pair_one_hot, resize_flow, warp

__all__ = [
    "PAIR_KEYS",
    "PairPrepareBatch",
    "PredToDDF",
    "IdentityToDDF",
    "ResizeToDDF",
    "SVFToDDF",
    "RegistrationLoss",
    "RegistrationEvalPostprocess",
    "resize_image",
]

PAIR_KEYS = ("moving_image", "fixed_image", "moving_label", "fixed_label")


def _as_tensor(x: Any) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


class PairPrepareBatch(PrepareBatch):
    """``batch -> (inputs, targets)`` with ``inputs = cat([moving, fixed], 1)`` and ``targets`` a dict.

    ``targets`` holds ``moving_image``, ``fixed_image`` and, where present in the batch, ``moving_label`` and
    ``fixed_label`` (integer maps ``(B, 1, *S)`` with classes ``0..K-1``), all as plain tensors on ``device``.
    """

    def __init__(self, keys: Sequence[str] = PAIR_KEYS) -> None:
        self.keys = tuple(keys)

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        moving_key, fixed_key = self.keys[0], self.keys[1]
        for key in (moving_key, fixed_key):
            if key not in batchdata:
                raise KeyError(f"PairPrepareBatch: batch has no `{key}` (keys: {sorted(batchdata)}).")
        targets = {}
        for key in self.keys:
            if key in batchdata:
                targets[key] = _as_tensor(batchdata[key]).to(device=device, non_blocking=non_blocking, **kwargs)
        moving, fixed = targets[moving_key], targets[fixed_key]
        if moving.shape != fixed.shape:
            raise ValueError(
                f"PairPrepareBatch: `{moving_key}` shape {tuple(moving.shape)} != `{fixed_key}` shape "
                f"{tuple(fixed.shape)}; resample both onto one grid in the transforms."
            )
        inputs = torch.cat([moving.float(), fixed.float()], dim=1)
        return inputs, targets


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Linear resize of an image or one-hot map (``align_corners=True``, matching :func:`resize_flow`)."""
    size = tuple(int(s) for s in size)
    if tuple(image.shape[2:]) == size:
        return image
    mode = "bilinear" if image.ndim == 4 else "trilinear"
    return F.interpolate(image.float(), size=size, mode=mode, align_corners=True)


class PredToDDF(nn.Module):
    """Turns a network prediction into a displacement ``(B, D, *size)`` in voxels of ``size``.

    ``native_shape(pred)`` is the grid on which the prediction is naturally a displacement (used when a loss
    is computed on the prediction's grid, e.g. Han et al.'s half-resolution loss).
    """

    def native_shape(self, pred: torch.Tensor) -> tuple[int, ...]:
        return tuple(pred.shape[2:])

    def forward(self, pred: torch.Tensor, size: Sequence[int]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class IdentityToDDF(PredToDDF):
    """``pred`` already is the displacement on the input grid."""

    def forward(self, pred: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(pred.shape[2:]) != tuple(size):
            raise ValueError(f"IdentityToDDF: prediction grid {tuple(pred.shape[2:])} != requested {tuple(size)}.")
        return pred


class ResizeToDDF(PredToDDF):
    """``pred`` is a displacement on a coarser grid (e.g. half resolution): resize and rescale vectors."""

    def forward(self, pred: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return resize_flow(pred, size)


class SVFToDDF(PredToDDF):
    """``pred[:, :D]`` is a stationary velocity field (extra channels, e.g. log-variances, are ignored).

    The field is integrated on the prediction's grid, then resized (vectors rescaled).

    Args:
        num_steps: scaling-and-squaring steps.
        inverse: integrate ``-v`` instead: the displacement of the inverse transform ``exp(-v)`` (it lives on the
            moving image's side: it pulls the fixed image onto the moving one).
    """

    def __init__(self, num_steps: int = 7, inverse: bool = False) -> None:
        super().__init__()
        self.integrate = VelocityIntegrator(num_steps)
        self.inverse = bool(inverse)

    def forward(self, pred: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        dims = pred.ndim - 2
        v = pred[:, :dims]
        return resize_flow(self.integrate(-v if self.inverse else v), size)


class RegistrationLoss(nn.Module):
    """Weighted sum of image, label and regularisation terms for a pull-back registration.

    ``total = sum_i w_i * image_loss_i(warped, fixed) + sum_j v_j * label_loss_j(warped_onehot, fixed_onehot)
    + sum_k r_k * regulariser_k(ddf)``; every term is minimised. The last values of each term are kept in
    :attr:`last_terms` (floats) for logging.

    Args:
        image_losses / image_weights: similarity losses called as ``loss(warped_moving, fixed)``.
        label_losses / label_weights: called as ``loss(warped_moving_onehot, fixed_onehot)``; skipped when the
            batch has no labels.
        regularisers / regulariser_weights: called as ``reg(ddf)``.
        pred_to_ddf: how the network prediction becomes a displacement (default: it is one).
        loss_grid: ``"input"`` computes the loss on the input grid; ``"pred"`` on the prediction's native grid
            (images and one-hot labels are linearly resized to it first: Han et al. 2021 compute their loss on
            half-size images with the half-size flow).
        num_classes: label classes K (labels ``0..K-1``); default: inferred per batch from the max label.
    """

    def __init__(
        self,
        image_losses: Sequence[nn.Module] = (),
        image_weights: Sequence[float] | None = None,
        label_losses: Sequence[nn.Module] = (),
        label_weights: Sequence[float] | None = None,
        regularisers: Sequence[nn.Module] = (),
        regulariser_weights: Sequence[float] | None = None,
        pred_to_ddf: PredToDDF | None = None,
        loss_grid: str = "input",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.image_losses = nn.ModuleList(image_losses)
        self.label_losses = nn.ModuleList(label_losses)
        self.regularisers = nn.ModuleList(regularisers)
        self.image_weights = self._weights(image_weights, self.image_losses, "image_weights")
        self.label_weights = self._weights(label_weights, self.label_losses, "label_weights")
        self.regulariser_weights = self._weights(regulariser_weights, self.regularisers, "regulariser_weights")
        self.pred_to_ddf = pred_to_ddf if pred_to_ddf is not None else IdentityToDDF()
        if loss_grid not in ("input", "pred"):
            raise ValueError(f"RegistrationLoss: loss_grid must be 'input' or 'pred', got {loss_grid!r}.")
        self.loss_grid = loss_grid
        self.num_classes = num_classes
        self.last_terms: dict[str, float] = {}

    @staticmethod
    def _weights(weights: Sequence[float] | None, losses: nn.ModuleList, name: str) -> list[float]:
        if weights is None:
            return [1.0] * len(losses)
        if len(weights) != len(losses):
            raise ValueError(f"RegistrationLoss: {len(weights)} {name} for {len(losses)} losses.")
        return [float(w) for w in weights]

    def forward(self, pred: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        moving, fixed = targets["moving_image"].float(), targets["fixed_image"].float()
        size = self.pred_to_ddf.native_shape(pred) if self.loss_grid == "pred" else tuple(fixed.shape[2:])
        ddf = self.pred_to_ddf(pred, size)
        moving, fixed = resize_image(moving, size), resize_image(fixed, size)
        warped = warp(moving, ddf)
        total = pred.new_zeros(())
        terms: dict[str, float] = {}
        for loss, w in zip(self.image_losses, self.image_weights):
            value = loss(warped, fixed)
            terms[type(loss).__name__] = float(value.detach())
            total = total + w * value
        if len(self.label_losses) and "moving_label" in targets and "fixed_label" in targets:
            moh, foh, _ = pair_one_hot(targets["moving_label"], targets["fixed_label"], self.num_classes)
            moh, foh = resize_image(moh, size), resize_image(foh, size)
            woh = warp(moh, ddf)
            for loss, w in zip(self.label_losses, self.label_weights):
                value = loss(woh, foh)
                terms[type(loss).__name__] = float(value.detach())
                total = total + w * value
        for reg, w in zip(self.regularisers, self.regulariser_weights):
            value = reg(ddf)
            terms[type(reg).__name__] = float(value.detach())
            total = total + w * value
        terms["total"] = float(total.detach())
        self.last_terms = terms
        return total


class RegistrationEvalPostprocess:
    """Evaluator postprocessing (``decollate=False``): warp moving labels for Dice.

    Reads ``pred`` and the targets dict under ``label`` from the engine output and writes ``ddf``,
    ``warped_label`` (one-hot of the argmax of the linearly warped one-hot moving labels) and
    ``fixed_label_onehot``, both ``(B, K, *S)``, for MONAI's ``MeanDice`` handler.
    """

    def __init__(self, pred_to_ddf: PredToDDF | None = None, num_classes: int | None = None) -> None:
        self.pred_to_ddf = pred_to_ddf if pred_to_ddf is not None else IdentityToDDF()
        self.num_classes = num_classes

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        targets = data["label"]
        fixed = targets["fixed_image"]
        with torch.no_grad():
            ddf = self.pred_to_ddf(data["pred"], fixed.shape[2:])
            data["ddf"] = ddf
            if "moving_label" in targets and "fixed_label" in targets:
                moh, foh, k = pair_one_hot(targets["moving_label"], targets["fixed_label"], self.num_classes)
                data["warped_label"] = one_hot(warp(moh, ddf).argmax(1, keepdim=True), k)
                data["fixed_label_onehot"] = foh
        return data
