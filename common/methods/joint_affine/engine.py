"""Zhu et al. 2020's joint affine and deformable registration as pieces for MONAI engines.

:class:`common.networks.JointAffineDeformNet` returns ``pred = [total, affine, deformable]`` (``3 D``
channels, displacements in voxels of the input grid, pull-back; see its module docstring).

* :func:`split_joint` splits ``pred`` into the three fields;
* :class:`JointToDDF` hands one of them (default: the total) to the inference and evaluation engines, so
  :class:`~common.engines.SaveRegistrationOutputsd` and :class:`~common.engines.RegistrationEvalPostprocess`
  work unchanged;
* :class:`JointAffineDeformLoss` is the paper's training loss::

      total = w_aff * (1 - NCC(A, F))                    global NCC of the affine result (eq. 1)
            + w_sim * (1 - LNCC^2(M o total, F))         local NCC in a 9^3 window (eq. 2)
            + w_anat * (1 - Dice(S_M o total, S_F))      when both label maps are given
            + lambda * mean |grad u|^2                   diffusion regulariser of the deformable field

  with ``A = M o affine``. The warped moving image of the similarity term is ``M`` resampled ONCE with the
  composed field (what inference outputs) rather than ``A`` resampled again by ``u``; the two agree up to
  interpolation (tests/methods/test_joint_affine_network.py) and gradients reach both fields either way.

References:
    Zhu Z., et al. "Joint affine and deformable three-dimensional networks for brain MRI registration."
    Medical Physics 48(3):1182-1196, 2021 (arXiv 2020).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

from common.blocks import AffineTransform, affine_normalised_to_voxel, ddf_to_affine, resize_flow
from common.engines.instance_optimisation import InstanceOptimiser
from common.engines.registration import PredToDDF, RegistrationLoss
from common.losses.image import GlobalNCCLoss, LocalNCCLoss
from common.losses.labels import SoftDiceLoss
from common.losses.regularisers import GradientRegulariser

__all__ = ["split_joint", "JointToDDF", "JointAffineDeformLoss", "AffineRefinementInferer", "AffineTransformFile"]

_COMPONENTS = ("total", "affine", "deformable")
_TERM_NAMES = {"GlobalNCCLoss": "affine_ncc", "LocalNCCLoss": "local_ncc", "SoftDiceLoss": "dice"}


def split_joint(pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pred (B, 3D, *S)`` -> ``(total, affine, deformable)``, each ``(B, D, *S)`` in voxels (pull-back).

    Raises:
        ValueError: ``pred`` is not a ``(B, 3 D, *S)`` tensor with ``D`` in (2, 3).
    """
    if not isinstance(pred, torch.Tensor):
        raise TypeError(f"split_joint: `pred` must be a torch.Tensor, got {type(pred).__name__}.")
    dims = pred.ndim - 2
    if dims not in (2, 3) or pred.shape[1] != 3 * dims:
        raise ValueError(
            f"split_joint: expected (B, {3 * dims if dims in (2, 3) else '3D'}, *S) = [total, affine, deformable] "
            f"displacements with 2 or 3 spatial dims, got shape {tuple(pred.shape)}."
        )
    return pred[:, :dims], pred[:, dims : 2 * dims], pred[:, 2 * dims :]


class JointToDDF(PredToDDF):
    """One field of a :class:`~common.networks.JointAffineDeformNet` prediction as a displacement.

    Args:
        component: ``"total"`` (affine then deformable; what registration outputs), ``"affine"`` or
            ``"deformable"``.

    Forward: ``pred (B, 3D, *S)`` and ``size`` -> ``(B, D, *size)`` in voxels of ``size`` (resized with
    rescaled vectors when ``size != S``).
    """

    def __init__(self, component: str = "total") -> None:
        super().__init__()
        if component not in _COMPONENTS:
            raise ValueError(f"JointToDDF: component must be one of {_COMPONENTS}, got {component!r}.")
        self.index = _COMPONENTS.index(component)

    def forward(self, pred: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        field = split_joint(pred)[self.index]
        if tuple(field.shape[2:]) == tuple(int(s) for s in size):
            return field
        return resize_flow(field, size)


class JointAffineDeformLoss(nn.Module):
    """The training loss of Zhu et al. 2020 (module docstring), called as ``loss(pred, targets)``.

    ``pred`` is the network output ``(B, 3D, *S)``; ``targets`` holds ``moving_image`` and ``fixed_image``
    ``(B, C, *S)`` and optionally ``moving_label`` / ``fixed_label`` (integer maps ``(B, 1, *S)``, classes
    ``0..K-1``). Every term is minimised; a term whose weight is 0 is not computed. The last values are kept in
    :attr:`last_terms` (floats): ``affine_ncc`` (``1 - NCC``, in ``[0, 2]``), ``local_ncc`` (``1 - LNCC^2``, in
    ``[0, 1]``), ``dice`` (``1 - mean foreground soft Dice``, in ``[0, 1]``; only when computed), ``smooth``
    (voxels^2 per voxel^2) and ``total`` (the weighted sum).

    Args:
        affine_weight: weight of the global NCC between the affinely warped moving image and the fixed one.
        sim_weight: weight of the local NCC between the finally warped moving image and the fixed one.
        anat_weight: weight of the Dice loss of the warped moving labels (background excluded).
        smooth_weight: ``lambda``, weight of the diffusion regulariser of the deformable field ``u`` (voxels).
        lncc_kernel: odd window width of the local NCC in voxels (the paper: 9).
        num_classes: label classes K (labels ``0..K-1``); default: inferred per batch from the max label.
    """

    def __init__(
        self,
        affine_weight: float = 1.0,
        sim_weight: float = 1.0,
        anat_weight: float = 1.0,
        smooth_weight: float = 1.0,
        lncc_kernel: int = 9,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        weights = {"affine_weight": affine_weight, "sim_weight": sim_weight, "anat_weight": anat_weight,
                   "smooth_weight": smooth_weight}  # fmt: skip
        for key, value in weights.items():
            if not math.isfinite(float(value)) or float(value) < 0:
                raise ValueError(f"{name}: `{key}` must be a finite number >= 0, got {value}.")
        if not any(float(v) > 0 for v in weights.values()):
            raise ValueError(f"{name}: every weight is 0; nothing to minimise.")
        if num_classes is not None and int(num_classes) < 2:
            raise ValueError(f"{name}: num_classes must be >= 2 (background + labels), got {num_classes}.")
        self.affine_weight, self.sim_weight = float(affine_weight), float(sim_weight)
        self.anat_weight, self.smooth_weight = float(anat_weight), float(smooth_weight)
        self.num_classes = None if num_classes is None else int(num_classes)
        # The image and label terms are two RegistrationLoss instances (the shared warp / one-hot / term
        # mechanism), one on the affine field and one on the total field; the regulariser acts on u directly.
        self.affine_term = (
            RegistrationLoss([GlobalNCCLoss()], [self.affine_weight], pred_to_ddf=JointToDDF("affine"))
            if self.affine_weight > 0 else None
        )  # fmt: skip
        sim = [LocalNCCLoss(kernel_size=lncc_kernel)] if self.sim_weight > 0 else []
        anat = [SoftDiceLoss(include_background=False)] if self.anat_weight > 0 else []
        self.final_term = (
            RegistrationLoss(sim, [self.sim_weight] * len(sim), anat, [self.anat_weight] * len(anat),
                             pred_to_ddf=JointToDDF("total"), num_classes=self.num_classes)
            if sim or anat else None
        )  # fmt: skip
        self.regulariser = GradientRegulariser(penalty="l2")
        self.last_terms: dict[str, float] = {}

    def forward(self, pred: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        name = type(self).__name__
        u = split_joint(pred)[2]
        for key in ("moving_image", "fixed_image"):
            if key not in targets:
                raise KeyError(f"{name}: `targets` has no `{key}` (keys: {sorted(targets)}).")
        moving, fixed = targets["moving_image"], targets["fixed_image"]
        if tuple(fixed.shape[2:]) != tuple(pred.shape[2:]) or moving.shape != fixed.shape:
            raise ValueError(
                f"{name}: `pred` {tuple(pred.shape)}, `moving_image` {tuple(moving.shape)} and `fixed_image` "
                f"{tuple(fixed.shape)} must share one spatial grid."
            )
        total = pred.new_zeros(())
        terms: dict[str, float] = {}
        for part in (self.affine_term, self.final_term):
            if part is None:
                continue
            total = total + part(pred, targets)
            terms.update({_TERM_NAMES[k]: v for k, v in part.last_terms.items() if k != "total"})
        if self.smooth_weight > 0:
            value = self.regulariser(u)
            terms["smooth"] = float(value.detach())
            total = total + self.smooth_weight * value
        terms["total"] = float(total.detach())
        self.last_terms = terms
        return total


class AffineRefinementInferer(Inferer):
    """Run :class:`~common.networks.JointAffineDeformNet` with its affine part refined for the pair at hand.

    Instance-specific optimisation of the affine part only (not in Zhu et al. 2020): starting from the network's
    matrix, Adam changes the 12 (2D: 6) affine parameters to minimise the paper's affine loss, ``1 - NCC`` of the
    moving image warped by the affine map against the fixed image (eq. 1); the deformable part then registers
    the moving image warped by the refined map (:meth:`~common.networks.JointAffineDeformNet.forward_with_affine`).
    The parameters with the lowest loss seen are kept, the network's own included, so the affine loss never ends
    above the network's. The weights are not touched; gradients are enabled inside the evaluator's ``no_grad``.

    Args:
        iterations: Adam steps (0: the network's prediction as is).
        lr: Adam learning rate on the change of the map in normalised coordinates (axes scaled to ``[-1, 1]``:
            0.01 is about 0.6 degrees of rotation, 1 % of scale, or 0.5 % of the image size of translation).
        progress: show a progress bar.

    After each call :attr:`history` holds the loss per step and :attr:`seconds` the optimisation time.
    """

    def __init__(self, iterations: int = 0, lr: float = 0.01, progress: bool = True) -> None:
        super().__init__()
        if int(iterations) < 0:
            raise ValueError(f"AffineRefinementInferer: iterations must be >= 0, got {iterations}.")
        if not (math.isfinite(float(lr)) and float(lr) > 0):
            raise ValueError(f"AffineRefinementInferer: lr must be a finite number > 0, got {lr}.")
        self.iterations, self.lr, self.progress = int(iterations), float(lr), progress
        self.loss = GlobalNCCLoss()
        self.transform = AffineTransform()
        self.history: list[float] = []
        self.seconds = 0.0

    def refine(self, network: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The refined ``(B, D, D + 1)`` matrix in centred voxel coordinates for ``inputs`` ``[moving, fixed]``."""
        self.history, self.seconds = [], 0.0
        start = time.perf_counter()
        half = inputs.shape[1] // 2
        moving, fixed = inputs[:, :half].detach(), inputs[:, half:].detach()
        size = tuple(inputs.shape[2:])
        with torch.no_grad():
            init = network.affine_matrix(inputs).detach()

        def objective(delta: torch.Tensor) -> torch.Tensor:
            return self.loss(self.transform(moving, init + affine_normalised_to_voxel(delta, size))[0], fixed)

        # the one Adam loop of the project (common.engines.instance_optimisation), on the change of the map
        delta, self.history = InstanceOptimiser.fit_affine(
            objective, torch.zeros_like(init), self.iterations, self.lr, progress=self.progress
        )
        best = init + affine_normalised_to_voxel(delta, size)
        self.seconds = time.perf_counter() - start
        return best

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.iterations == 0:
            return network(inputs, *args, **kwargs)
        net = getattr(network, "module", network)  # DistributedDataParallel
        if not hasattr(net, "forward_with_affine"):
            raise TypeError(
                f"AffineRefinementInferer: {type(net).__name__} has no forward_with_affine; affine refinement needs "
                "a JointAffineDeformNet."
            )
        return net.forward_with_affine(inputs, self.refine(net, inputs))


class AffineTransformFile:
    """``extra_files`` hook of :class:`~common.engines.SaveRegistrationOutputsd`: the affine part alone as an ITK
    affine transform file (``affine.tfm``, loads in 3D Slicer and ``itk.transformread``).

    The matrix is fitted to the affine field of ``pred`` (:func:`common.blocks.ddf_to_affine`, exact up to float
    rounding) on the network grid; both images were resampled onto that grid in world coordinates, so the file
    maps fixed physical points to moving physical points of the original images (ITK resampling convention).
    """

    def __init__(self, filename: str = "affine.tfm") -> None:
        self.filename = filename

    def __call__(self, item: dict, out_dir, geometry: dict) -> dict[str, str]:
        from pathlib import Path

        from common.io.itk_affine import write_itk_affine

        pred = item["pred"]
        pred = pred.as_tensor() if hasattr(pred, "as_tensor") else pred
        with torch.no_grad():
            matrix = ddf_to_affine(split_joint(pred[None].float().cpu())[1])[0]
        shape = tuple(int(n) for n in pred.shape[1:])
        path = write_itk_affine(matrix.numpy(), geometry["net_affine"], geometry["net_affine"],
                                Path(out_dir) / self.filename, shape=shape)  # fmt: skip
        return {"affine_itk": str(path)}
