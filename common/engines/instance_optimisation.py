"""The one instance-optimisation engine: fit a displacement field to one pair by gradient descent (Adam).

Every bundle and script that refines a field for a pair goes through :class:`InstanceOptimiser`:

* the brain bundles' ``instance_iterations`` (network field -> refined on the input grid, the finest level at the
  input resolution, e.g. 1 mm), wired in :class:`common.engines.SaveRegistrationOutputsd`;
* the toolkit-only demo and the classic NGF B-spline baseline (from zero);
* ``brain_mri_joint_affine``'s affine refinement (:meth:`InstanceOptimiser.fit_affine`, from the network's matrix).

Deformable optimisation, coarse to fine over ``levels`` (downsampling factors of the image grid, e.g. ``(4, 2, 1)``;
the last level should be 1, the input grid). At each level both images are Gaussian-smoothed (sigma ``f / 2``
voxels of the input, anti-aliasing) and resampled to ``S // f`` voxels; the field found so far (or ``init``, e.g. a
network's field, or zero) is resized onto that grid and held fixed, and a residual is optimised on a parameter grid
``grid_factor`` times coarser (dense, optionally smoothed by ``smoothing`` passes of a 3-voxel box filter), or on
cubic B-spline control points (``bspline_stride``). The total field is ``init + residual``, or with
``diffeomorphic=True`` ``init o exp(v)`` (a stationary velocity ``v`` integrated by scaling and squaring; the
composition keeps ``init``'s own invertibility). The loss is ``similarity(moving o total, fixed) + reg_weight *
regulariser(field)``, the regulariser taken on the parameter grid (the total field, or ``v`` when diffeomorphic).

Similarities: ``"lncc"`` (:class:`common.losses.LocalNCCLoss`), ``"mind"`` (squared difference of MIND-SSC
descriptors, :mod:`common.losses.mind`; descriptors of both images are computed once per level and the warped
moving descriptors compared, as ConvexAdam and Heinrich et al. do), ``"ssd"`` or any loss module. For the pointwise
ones (``"mind"``, ``"ssd"``) ``samples > 0`` evaluates the similarity at that many random voxels per step (a new
draw every step, seeded) instead of the whole grid: the finest level then still reads every 1 mm voxel's
descriptor, at a fraction of the cost (elastix's random sampler works the same way). Regularisers:
``"diffusion"`` (:class:`common.losses.GradientRegulariser`, ``l2``), ``"bending"``
(:class:`common.losses.BendingEnergyRegulariser`) or a module.

Deterministic: with the same inputs, settings and ``seed`` the result is the same (one thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from common.blocks import (
    BSplineTransformer,
    VelocityIntegrator,
    compose_ddf,
    control_grid_shape,
    resize_flow,
    sample_at,
    warp,
)
from common.losses import BendingEnergyRegulariser, GradientRegulariser, LocalNCCLoss, SSDLoss
from common.losses.mind import box_mean, mind_ssc
from common.losses.probabilistic import GaussianSmoothing

__all__ = ["InstanceOptimiser", "SIMILARITIES", "REGULARISERS"]

SIMILARITIES = ("lncc", "mind", "ssd")
REGULARISERS = ("diffusion", "bending")
_POINTWISE = ("mind", "ssd")


def _as_levels(levels: Sequence[int] | int) -> tuple[int, ...]:
    out = (int(levels),) if isinstance(levels, (int, float)) else tuple(int(f) for f in levels)
    if not out or any(f < 1 for f in out) or list(out) != sorted(out, reverse=True):
        raise ValueError(
            f"InstanceOptimiser: levels must be factors >= 1, coarse to fine (e.g. [4, 2, 1]), got {levels}."
        )
    return out


class InstanceOptimiser:
    """Coarse-to-fine instance optimisation of a displacement field (module docstring).

    Args:
        image_loss: ``"lncc"``, ``"mind"``, ``"ssd"`` or a loss module ``loss(warped, fixed)`` (minimised); or one
            of those per level (e.g. ``["lncc", "mind"]``: local NCC on the coarse grid, MIND at full resolution).
        regulariser: ``"diffusion"``, ``"bending"`` or a module ``reg(field)`` on the parameter grid.
        reg_weight: regularisation weight (one for every level, or one per level).
        iterations: Adam steps per level (one number for every level, or one per level).
        lr: Adam learning rate, in voxels of the parameter grid per step.
        levels: downsampling factors of the image grid, coarse to fine; ``(1,)`` is one level on the input grid.
        grid_factor: the residual lives on a grid this many times coarser than the level's (1 = every voxel).
        diffeomorphic: optimise a stationary velocity ``v``; the total is ``init o exp(v)``.
        bspline_stride: optimise cubic B-spline control points with this spacing (voxels of the level) instead
            of a dense residual (``grid_factor`` and ``smoothing`` are then ignored).
        smoothing: passes of a 3-voxel box filter applied to the dense residual every step (0 = none).
        samples: for ``"mind"``/``"ssd"``, random voxels per step where the similarity is evaluated (0 = all).
        ncc_kernel: window of ``"lncc"`` in voxels.
        mind_radius, mind_dilation: MIND-SSC patch radius and neighbour distance in voxels.
        seed: seed of the voxel sampling.
        progress: show a tqdm progress bar.
    """

    def __init__(
        self,
        image_loss: str | nn.Module = "lncc",
        regulariser: str | nn.Module = "diffusion",
        reg_weight: float | Sequence[float] = 1.0,
        iterations: int | Sequence[int] = 100,
        lr: float = 0.1,
        levels: Sequence[int] | int = (1,),
        grid_factor: int = 2,
        diffeomorphic: bool = False,
        bspline_stride: int | None = None,
        smoothing: int = 0,
        samples: int = 0,
        ncc_kernel: int = 9,
        mind_radius: int = 1,
        mind_dilation: int = 2,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        name = "InstanceOptimiser"
        self.levels = _as_levels(levels)
        iters = [iterations] * len(self.levels) if isinstance(iterations, (int, float)) else list(iterations)
        if len(iters) != len(self.levels) or any(int(i) != i or i < 0 for i in iters):
            raise ValueError(
                f"{name}: iterations must be an integer >= 0 or one per level ({len(self.levels)}), got {iterations}."
            )
        self.iterations = [int(i) for i in iters]
        if grid_factor < 1:
            raise ValueError(f"{name}: grid_factor must be >= 1, got {grid_factor}.")
        if not lr > 0:
            raise ValueError(f"{name}: lr must be > 0, got {lr}.")
        if smoothing < 0 or samples < 0:
            raise ValueError(f"{name}: smoothing and samples must be >= 0, got {smoothing}, {samples}.")
        losses = list(image_loss) if isinstance(image_loss, (list, tuple)) else [image_loss] * len(self.levels)
        if len(losses) != len(self.levels):
            raise ValueError(
                f"{name}: image_loss must be one loss or one per level ({len(self.levels)}), got {image_loss}."
            )
        self.kinds: list[str] = []
        self.similarities: list[nn.Module | None] = []
        for loss in losses:
            if isinstance(loss, str):
                if loss not in SIMILARITIES:
                    raise ValueError(f"{name}: unknown image_loss {loss!r}; use one of {SIMILARITIES} or a module.")
                module = LocalNCCLoss(kernel_size=ncc_kernel) if loss == "lncc" else None
                self.kinds.append(loss)
                self.similarities.append(SSDLoss() if loss == "ssd" else module)
            else:
                self.kinds.append("module")
                self.similarities.append(loss)
        if isinstance(regulariser, str):
            if regulariser not in REGULARISERS:
                raise ValueError(f"{name}: unknown regulariser {regulariser!r}; use one of {REGULARISERS} or a module.")
            regulariser = GradientRegulariser("l2") if regulariser == "diffusion" else BendingEnergyRegulariser()
        self.regulariser = regulariser
        weights = [reg_weight] * len(self.levels) if isinstance(reg_weight, (int, float)) else list(reg_weight)
        if len(weights) != len(self.levels) or any(not float(w) >= 0 for w in weights):
            raise ValueError(f"{name}: reg_weight must be >= 0, one number or one per level, got {reg_weight}.")
        self.reg_weights = [float(w) for w in weights]
        self.lr = float(lr)
        self.grid_factor, self.smoothing, self.samples = int(grid_factor), int(smoothing), int(samples)
        self.mind_radius, self.mind_dilation, self.seed, self.progress = mind_radius, mind_dilation, seed, progress
        self.integrator = VelocityIntegrator() if diffeomorphic else None
        self.bspline = BSplineTransformer(bspline_stride) if bspline_stride else None
        self.bspline_stride = bspline_stride
        self.history: list[float] = []
        self.seconds = 0.0

    @property
    def total_iterations(self) -> int:
        return sum(self.iterations)

    # -- pieces -------------------------------------------------------------------------------------------------
    def _level_images(self, moving: torch.Tensor, fixed: torch.Tensor, factor: int):
        size = tuple(moving.shape[2:])
        if factor == 1:
            return moving, fixed, size
        smooth = GaussianSmoothing(factor / 2.0, dims=len(size)).to(moving.device)
        shape = tuple(max(4, s // factor) for s in size)
        mode = "bilinear" if len(size) == 2 else "trilinear"

        def down(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(smooth(x), size=shape, mode=mode, align_corners=True)

        return down(moving), down(fixed), shape

    def _features(self, image: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "mind":
            return mind_ssc(image, self.mind_radius, self.mind_dilation)
        return image

    def _residual(self, params: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """The residual (or velocity) on the parameter grid from the parameters."""
        if self.bspline is not None:
            return params
        for _ in range(self.smoothing):
            params = box_mean(params, 1)
        return params

    def _to_level(self, field: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        if self.bspline is not None:
            return self.bspline(field, size)
        return resize_flow(field, size)

    def field(self, params: torch.Tensor, size: tuple[int, ...], init: torch.Tensor | None = None) -> torch.Tensor:
        """Total displacement on a grid of ``size`` from the parameters and the (fixed) ``init`` on that grid."""
        r = self._residual(params, size)
        if self.integrator is not None:
            r = self.integrator(r) if self.bspline is None else r
        r = self._to_level(r, size)
        if self.integrator is not None and self.bspline is not None:
            r = self.integrator(r)
        if init is None:
            return r
        return compose_ddf(init, r) if self.integrator is not None else init + r

    def _param_shape(self, size: tuple[int, ...]) -> tuple[int, ...]:
        if self.bspline is not None:
            return control_grid_shape(size, self.bspline_stride)
        return tuple(max(2, s // self.grid_factor) for s in size)

    # -- deformable ---------------------------------------------------------------------------------------------
    def __call__(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        init: torch.Tensor | None = None,
        callback: Callable[[int, float], None] | None = None,
    ) -> torch.Tensor:
        """Optimise for one pair.

        Args:
            moving, fixed: ``(1, 1, *S)`` images on one grid (intensities scaled alike, e.g. to [0, 1]).
            init: starting displacement ``(1, D, *S_init)`` in voxels of its own grid (e.g. a network's field;
                resized to each level), default zero.
            callback: called with ``(step, loss)`` after every step (steps counted over all levels).

        Returns:
            The optimised displacement ``(1, D, *S)`` in voxels of ``S`` (detached).
        """
        if moving.shape != fixed.shape:
            raise ValueError(
                f"InstanceOptimiser: moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must share a grid."
            )
        size = tuple(moving.shape[2:])
        dims = len(size)
        if init is not None and (init.ndim != dims + 2 or init.shape[1] != dims):
            raise ValueError(
                f"InstanceOptimiser: init must be a displacement (1, {dims}, *S), got shape {tuple(init.shape)}."
            )
        start = time.perf_counter()
        self.history = []
        total = None if init is None else init.detach().to(moving.dtype)
        generator = torch.Generator(device="cpu").manual_seed(int(self.seed))
        bar = tqdm(total=self.total_iterations, desc="instance optimisation", disable=not self.progress, leave=False)
        step = 0
        for level, (factor, iterations) in enumerate(zip(self.levels, self.iterations)):
            kind, similarity = self.kinds[level], self.similarities[level]
            if iterations == 0 and factor != 1:
                continue
            mov_l, fix_l, shape = self._level_images(moving, fixed, factor)
            init_l = None if total is None else resize_flow(total, shape)
            if iterations == 0:
                total = init_l
                continue
            with torch.no_grad():
                feat_m, feat_f = self._features(mov_l, kind), self._features(fix_l, kind)
            params = torch.zeros(1, dims, *self._param_shape(shape), dtype=moving.dtype, device=moving.device)
            params.requires_grad_(True)
            init_p = None
            if init_l is not None and self.integrator is None and self.bspline is None:
                init_p = resize_flow(init_l, params.shape[2:])  # regularise the total field on the parameter grid
            optimiser = torch.optim.Adam([params], lr=self.lr)
            sampled = kind in _POINTWISE and self.bspline is None and 0 < self.samples < feat_f[0, 0].numel()
            for _ in range(iterations):
                optimiser.zero_grad(set_to_none=True)
                if sampled:
                    sim = self._sampled_similarity(params, shape, init_l, feat_m, feat_f, generator)
                else:
                    sim = self._dense_similarity(params, shape, init_l, feat_m, feat_f, kind, similarity)
                reg_field = self._residual(params, shape)
                if init_p is not None:
                    reg_field = reg_field + init_p
                loss = sim + self.reg_weights[level] * self.regulariser(reg_field)
                loss.backward()
                optimiser.step()
                value = float(loss.detach())
                self.history.append(value)
                bar.update(1)
                bar.set_postfix(level=factor, loss=f"{value:.4f}")
                if callback is not None:
                    callback(step, value)
                step += 1
            with torch.no_grad():
                total = self.field(params.detach(), shape, init_l).detach()
            del feat_m, feat_f, params
        bar.close()
        out = torch.zeros(1, dims, *size, dtype=moving.dtype, device=moving.device) if total is None else total
        self.seconds = time.perf_counter() - start
        return resize_flow(out, size).detach()

    def _dense_similarity(self, params, shape, init_l, feat_m, feat_f, kind, similarity) -> torch.Tensor:
        warped = warp(feat_m, self.field(params, shape, init_l))
        if kind == "mind":
            return ((warped - feat_f) ** 2).mean()
        return similarity(warped, feat_f)

    def _sampled_similarity(self, params, shape, init_l, feat_m, feat_f, generator) -> torch.Tensor:
        """Pointwise similarity at ``samples`` random voxels; the field is interpolated only there (dense grid)."""
        dims = len(shape)
        n = self.samples
        # voxels drawn with replacement, visited in memory order (far fewer cache misses than a random order)
        flat = torch.randint(0, int(torch.tensor(shape).prod()), (n,), generator=generator).sort().values
        idx, rest = [], flat
        for s in reversed(shape):
            idx.append(rest % s)
            rest = rest // s
        idx = torch.stack(idx[::-1]).to(feat_f.device)
        flat = flat.to(feat_f.device)
        x = idx.to(feat_f.dtype).view(1, dims, n, *([1] * (dims - 1)))  # the points as an (n, 1[, 1]) grid
        r = self._residual(params, shape)
        if self.integrator is not None:
            r = self.integrator(r)
        # r lives on the parameter grid, in its voxels: read it at x scaled into that grid, rescale the vectors
        scale = torch.tensor([(p - 1) / (s - 1) for p, s in zip(r.shape[2:], shape)], dtype=x.dtype, device=x.device)
        scale = scale.view(1, dims, *([1] * dims))
        u = sample_at(r, x * scale, padding_mode="border") / scale
        if init_l is not None:  # total = init + r, or init o exp(v): r(x) + init(x + r(x))
            at = x + u if self.integrator is not None else x
            u = u + sample_at(init_l, at, padding_mode="border")
        target = feat_f.flatten(2)[:, :, flat]
        moved = sample_at(feat_m, x + u, padding_mode="border").flatten(2)
        return ((moved - target) ** 2).mean()

    # -- affine -------------------------------------------------------------------------------------------------
    @staticmethod
    def fit_affine(
        objective: Callable[[torch.Tensor], torch.Tensor],
        init: torch.Tensor,
        iterations: int,
        lr: float,
        progress: bool = False,
    ) -> tuple[torch.Tensor, list[float]]:
        """Adam on a parameter tensor (e.g. an affine matrix) from ``init``; keeps the best parameters seen.

        Args:
            objective: maps the parameters to a scalar loss to minimise.
            init: starting parameters (not modified).
            iterations: Adam steps (0 returns ``init``).
            lr: Adam learning rate.

        Returns:
            ``(best parameters, loss history)``; the history starts with the loss of ``init``.
        """
        params = init.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([params], lr=lr)
        best, best_loss, history = init.detach().clone(), float("inf"), []
        with torch.enable_grad():  # also inside an evaluator's no_grad
            for _ in tqdm(range(iterations + 1), desc="affine refinement", disable=not progress, leave=False):
                optimiser.zero_grad(set_to_none=True)
                loss = objective(params)
                value = float(loss.detach())
                history.append(value)
                if value < best_loss:
                    best, best_loss = params.detach().clone(), value
                if len(history) > iterations:  # the last update is scored, not taken further
                    break
                loss.backward()
                optimiser.step()
        return best, history
