"""The one instance-optimisation engine: fit a displacement field to one pair by gradient descent (Adam).

Every bundle and script that refines a field for a pair goes through :class:`InstanceOptimiser`: the brain bundles'
``instance_iterations`` (network field -> refined, the finest level on the input grid, e.g. 1 mm; wired in
:class:`common.engines.SaveRegistrationOutputsd`), the toolkit-only demo and the classic NGF B-spline baseline (from
zero), ``brain_mri_joint_affine``'s affine refinement (:meth:`InstanceOptimiser.fit_affine`, from the network's matrix).

Deformable optimisation, coarse to fine over ``levels`` (downsampling factors of the image grid, e.g. ``(4, 2, 1)``;
the last level should be 1, the input grid). At each level both images are Gaussian-smoothed (sigma ``f / 2``
voxels of the input, anti-aliasing) and resampled to ``S // f`` voxels; the field found so far (or ``init``, e.g. a
network's field, or zero) is resized onto that grid and held fixed, and a residual is optimised on a parameter grid
``grid_factor`` times coarser (dense, optionally smoothed by ``smoothing`` passes of a 3-voxel box filter), or on
cubic B-spline control points (``bspline_stride``). The total field is ``init + residual``, or with
``diffeomorphic=True`` ``init o exp(v)`` (a stationary velocity ``v`` integrated by scaling and squaring; the
composition keeps ``init``'s own invertibility). The loss is ``similarity(moving o total, fixed) + reg_weight *
regulariser(field) [+ fold_weight * FoldingPenalty(total)]``, the regulariser taken on the parameter grid (the total
field, or ``v`` when diffeomorphic).

Similarities: ``"lncc"`` (:class:`common.losses.LocalNCCLoss`), ``"mind"`` (squared difference of MIND-SSC
descriptors, :mod:`common.losses.mind`; descriptors of both images are computed once per level and the warped
moving descriptors compared, as ConvexAdam and Heinrich et al. do), ``"ssd"`` or any loss module. For the pointwise
ones (``"mind"``, ``"ssd"``) ``samples > 0`` evaluates the similarity at that many random voxels per step (a new
draw every step, seeded) instead of the whole grid: the finest level then still reads every 1 mm voxel's
descriptor, at a fraction of the cost (elastix's random sampler works the same way). For ``"lncc"``,
``samples > 0`` evaluates it on random cubes of ``patch_size`` voxels (``samples // patch_size**D`` of them per
step) centred on foreground voxels (either image above its minimum + 1 % of its range), scored on each cube's
interior (``ncc_kernel // 2`` voxels in from its faces, where every window lies inside the cube) and multiplied
by the foreground fraction: background windows score a constant and carry no gradient, so this estimates the
dense mean up to a constant, its gradient the dense gradient, and ``reg_weight`` keeps its meaning. Regularisers:
``"diffusion"`` (:class:`common.losses.GradientRegulariser`, ``l2``), ``"bending"``
(:class:`common.losses.BendingEnergyRegulariser`) or a module.

Deterministic: with the same inputs, settings and ``seed`` the result is the same (one thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from common.blocks import BSplineTransformer, VelocityIntegrator, compose_ddf, control_grid_shape, resize_flow, warp
from common.engines.io_sampling import cube_lncc, foreground_indices, sampled_similarity
from common.losses import BendingEnergyRegulariser, FoldingPenalty, GradientRegulariser, LocalNCCLoss, SSDLoss
from common.losses.fixed_lncc import FixedImageLNCC
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


def _per_level(value: float | Sequence[float], n: int, valid: Callable[[float], bool], message: str) -> list:
    """One number for every level or one per level, each ``valid``; else ``ValueError(message)``."""
    values = [value] * n if isinstance(value, (int, float)) else list(value)
    if len(values) != n or not all(valid(v) for v in values):
        raise ValueError(message)
    return values


def _similarities(losses: list[str | nn.Module], kernels: list[int]) -> tuple[list[str], list[nn.Module | None]]:
    """Per level: the similarity's kind (``lncc``/``mind``/``ssd``/``module``) and its module (None for MIND)."""
    bad = [loss for loss in losses if isinstance(loss, str) and loss not in SIMILARITIES]
    if bad:
        raise ValueError(f"InstanceOptimiser: unknown image_loss {bad[0]!r}; use one of {SIMILARITIES} or a module.")
    made = {"ssd": lambda k: SSDLoss(), "lncc": lambda k: LocalNCCLoss(kernel_size=k), "mind": lambda k: None}
    kinds = [loss if isinstance(loss, str) else "module" for loss in losses]
    return kinds, [made[loss](k) if isinstance(loss, str) else loss for loss, k in zip(losses, kernels)]


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
        grid_factor: the residual lives on a grid this many times coarser than the level's (1 = every voxel); one
            number for every level or one per level (e.g. ``[2, 2, 1]``: a voxel-wise residual on the input grid).
        diffeomorphic: optimise a stationary velocity ``v``; the total is ``init o exp(v)``.
        bspline_stride: optimise cubic B-spline control points with this spacing (voxels of the level) instead
            of a dense residual (``grid_factor`` and ``smoothing`` are then ignored).
        smoothing: passes of a 3-voxel box filter applied to the dense residual every step (0 = none).
        samples: random voxels per step where the similarity is evaluated (0 = all): single voxels for
            ``"mind"``/``"ssd"``, foreground cubes of ``patch_size`` for ``"lncc"`` (module docstring); one
            number for every level or one per level (e.g. ``[0, 524288]``: dense on the coarse level).
        patch_size: side of the ``"lncc"`` cubes in voxels (> ``ncc_kernel`` of every level that samples cubes).
        ncc_kernel: window of ``"lncc"`` in voxels (odd; one for every level, or one per level).
        mind_radius, mind_dilation: MIND-SSC patch radius and neighbour distance in voxels.
        seed: seed of the voxel sampling.
        progress: show a tqdm progress bar.
        regularise_total: dense, not diffeomorphic: regularise the total field ``init + residual`` (default) or,
            when False, the residual only (the starting field is not pulled towards smoothness; ANTs' greedy SyN
            likewise smooths only its updates). Diffeomorphic and B-spline runs always regularise the residual.
        final_sigma: standard deviation (voxels of the input grid) of a Gaussian applied to the returned total
            field (replicate padding); 0 = none. Evens out the Jacobian (lower SDlogJ) at little cost in Dice.
        fold_weight: weight of :class:`common.losses.FoldingPenalty` on the total field on the parameter grid
            (one number or one per level; dense, not diffeomorphic); removes folds a low ``reg_weight`` allows.
    """

    def __init__(
        self,
        image_loss: str | nn.Module = "lncc",
        regulariser: str | nn.Module = "diffusion",
        reg_weight: float | Sequence[float] = 1.0,
        iterations: int | Sequence[int] = 100,
        lr: float = 0.1,
        levels: Sequence[int] | int = (1,),
        grid_factor: int | Sequence[int] = 2,
        diffeomorphic: bool = False,
        bspline_stride: int | None = None,
        smoothing: int = 0,
        samples: int | Sequence[int] = 0,
        patch_size: int = 16,
        ncc_kernel: int | Sequence[int] = 9,
        mind_radius: int = 1,
        mind_dilation: int = 2,
        seed: int = 0,
        progress: bool = True,
        regularise_total: bool = True,
        final_sigma: float = 0.0,
        fold_weight: float | Sequence[float] = 0.0,
    ) -> None:
        name = "InstanceOptimiser"
        self.levels = _as_levels(levels)
        n = len(self.levels)
        iters = _per_level(iterations, n, lambda i: int(i) == i and i >= 0,
                           f"{name}: iterations must be an integer >= 0 or one per level ({n}), got {iterations}.")  # fmt: skip
        self.iterations = [int(i) for i in iters]
        factors = _per_level(grid_factor, n, lambda g: int(g) == g and g >= 1,
                             f"{name}: grid_factor must be an integer >= 1 or one per level ({n}), got {grid_factor}.")  # fmt: skip
        if not lr > 0:
            raise ValueError(f"{name}: lr must be > 0, got {lr}.")
        counts = _per_level(samples, n, lambda c: int(c) == c and c >= 0 and smoothing >= 0,
                            f"{name}: smoothing must be >= 0 and samples an integer >= 0 or one per level "
                            f"({n}), got {smoothing}, {samples}.")  # fmt: skip
        kernels = [int(k) for k in _per_level(ncc_kernel, n, lambda k: not isinstance(k, bool) and int(k) == k and k >= 1 and k % 2,
                   f"{name}: ncc_kernel must be an odd integer >= 1, or one per level ({n}), got {ncc_kernel}.")]  # fmt: skip
        losses = list(image_loss) if isinstance(image_loss, (list, tuple)) else [image_loss] * n
        if len(losses) != n:
            raise ValueError(f"{name}: image_loss must be one loss or one per level ({n}), got {image_loss}.")
        cube_windows = [k for k, loss, c in zip(kernels, losses, counts) if loss == "lncc" and c > 0]
        bound = 0 if bspline_stride else max(cube_windows, default=0)  # B-spline levels never sample cubes
        if int(patch_size) != patch_size or patch_size <= bound:  # only levels that may sample LNCC cubes need room
            raise ValueError(f"{name}: patch_size must be an integer > ncc_kernel ({bound}) of the levels that score "
                             f"LNCC on sampled cubes (0 without such levels), got {patch_size}.")  # fmt: skip
        self.kinds, self.similarities = _similarities(losses, kernels)
        if isinstance(regulariser, str):
            if regulariser not in REGULARISERS:
                raise ValueError(f"{name}: unknown regulariser {regulariser!r}; use one of {REGULARISERS} or a module.")
            regulariser = GradientRegulariser("l2") if regulariser == "diffusion" else BendingEnergyRegulariser()
        self.regulariser = regulariser
        weights = _per_level(reg_weight, n, lambda w: float(w) >= 0,
                             f"{name}: reg_weight must be >= 0, one number or one per level, got {reg_weight}.")  # fmt: skip
        self.reg_weights = [float(w) for w in weights]
        self.lr = float(lr)
        self.grid_factors, self.smoothing = [int(g) for g in factors], int(smoothing)
        self.samples = [int(c) for c in counts]
        self.patch_size, self.ncc_kernels = int(patch_size), kernels
        self.mind_radius, self.mind_dilation, self.seed, self.progress = mind_radius, mind_dilation, seed, progress
        self.integrator = VelocityIntegrator() if diffeomorphic else None
        self.bspline = BSplineTransformer(bspline_stride) if bspline_stride else None
        self.bspline_stride = bspline_stride
        self.regularise_total = bool(regularise_total)
        if not final_sigma >= 0:
            raise ValueError(f"{name}: final_sigma must be >= 0, got {final_sigma}.")
        self.final_sigma = float(final_sigma)
        folds = _per_level(fold_weight, n, lambda w: float(w) >= 0 and (not w or not (diffeomorphic or bspline_stride)),
                           f"{name}: fold_weight must be >= 0, one number or one per level, and 0 for diffeomorphic "
                           f"or B-spline runs, got {fold_weight}.")  # fmt: skip
        self.fold_weights, self.fold = [float(w) for w in folds], FoldingPenalty()
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

    def _residual(self, params: torch.Tensor) -> torch.Tensor:
        """The residual (or velocity) on the parameter grid: dense parameters smoothed, control points as they are."""
        if self.bspline is None:
            for _ in range(self.smoothing):
                params = box_mean(params, 1)
        return params

    def _dense_residual(self, params: torch.Tensor) -> torch.Tensor:
        """Dense parameters -> residual displacement on the parameter grid (``exp(v)`` when diffeomorphic)."""
        r = self._residual(params)
        return self.integrator(r) if self.integrator is not None else r

    def field(self, params: torch.Tensor, size: tuple[int, ...], init: torch.Tensor | None = None) -> torch.Tensor:
        """Total displacement on a grid of ``size`` from the parameters and the (fixed) ``init`` on that grid.

        Dense parameters are smoothed (and integrated when diffeomorphic) on their own grid, then resized; B-spline
        control points are evaluated on ``size`` first (and the velocity integrated there).
        """
        if self.bspline is None:
            r = resize_flow(self._dense_residual(params), size)
        else:
            r = self.bspline(params, size)
            r = self.integrator(r) if self.integrator is not None else r
        if init is None:
            return r
        return compose_ddf(init, r) if self.integrator is not None else init + r

    def _param_shape(self, size: tuple[int, ...], level: int) -> tuple[int, ...]:
        if self.bspline is not None:
            return control_grid_shape(size, self.bspline_stride)
        return tuple(max(2, s // self.grid_factors[level]) for s in size)

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
            if iterations == 0 and factor != 1:
                continue
            mov_l, fix_l, shape = self._level_images(moving, fixed, factor)
            init_l = None if total is None else resize_flow(total, shape)
            if iterations == 0:
                total = init_l
                continue
            total, step = self._optimise_level(level, mov_l, fix_l, shape, init_l, generator, bar, callback, step)
        bar.close()
        out = torch.zeros(1, dims, *size, dtype=moving.dtype, device=moving.device) if total is None else total
        out = resize_flow(out, size).detach()
        if self.final_sigma > 0 and total is not None:
            smooth = GaussianSmoothing(self.final_sigma, dims=dims).to(out.device)
            r = smooth.radius
            with torch.no_grad():
                out = smooth(F.pad(out, [r] * (2 * dims), mode="replicate"))
            out = out[(..., *[slice(r, r + s) for s in size])].contiguous()
        self.seconds = time.perf_counter() - start
        return out

    def _optimise_level(self, level: int, mov_l: torch.Tensor, fix_l: torch.Tensor, shape: tuple[int, ...],
                        init_l: torch.Tensor | None, generator: torch.Generator, bar: Any,
                        callback: Callable[[int, float], None] | None, step: int) -> tuple[torch.Tensor, int]:  # fmt: skip
        """Adam on one level's parameters; returns the level's total field and the step count so far."""
        kind, similarity = self.kinds[level], self.similarities[level]
        factor, iterations, dims = self.levels[level], self.iterations[level], len(shape)
        with torch.no_grad():
            feat_m, feat_f = self._features(mov_l, kind), self._features(fix_l, kind)
        params = torch.zeros(1, dims, *self._param_shape(shape, level), dtype=mov_l.dtype, device=mov_l.device)
        params.requires_grad_(True)
        init_p = None
        fold_weight, dense = self.fold_weights[level], self.integrator is None and self.bspline is None
        if init_l is not None and dense and (self.regularise_total or fold_weight):
            init_p = resize_flow(init_l, params.shape[2:])  # regularise the total field on the parameter grid
        optimiser = torch.optim.Adam([params], lr=self.lr)
        samples = self.samples[level]
        sampled = kind in _POINTWISE and self.bspline is None and 0 < samples < feat_f[0, 0].numel()
        cubes = (
            kind == "lncc" and self.bspline is None and 0 < samples < feat_f[0, 0].numel()
            and min(shape) >= self.patch_size
        )  # fmt: skip
        foreground = foreground_indices(feat_m, feat_f) if cubes else None
        if kind == "lncc" and not cubes:  # same value as LocalNCCLoss; fixed statistics once, analytic gradient
            similarity = FixedImageLNCC(feat_f, self.ncc_kernels[level])
        for _ in range(iterations):
            optimiser.zero_grad(set_to_none=True)
            if cubes:
                sim = cube_lncc(self, params, shape, init_l, feat_m, feat_f, foreground, generator, samples,
                                self.ncc_kernels[level])  # fmt: skip
            elif sampled:
                sim = sampled_similarity(self, params, shape, init_l, feat_m, feat_f, generator, samples)
            else:
                sim = self._dense_similarity(params, shape, init_l, feat_m, feat_f, kind, similarity)
            residual = self._residual(params)
            total_p = residual if init_p is None else residual + init_p
            loss = sim + self.reg_weights[level] * self.regulariser(total_p if self.regularise_total else residual)
            if fold_weight:
                loss = loss + fold_weight * self.fold(total_p)
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
        return total, step

    def _dense_similarity(self, params, shape, init_l, feat_m, feat_f, kind, similarity) -> torch.Tensor:
        warped = warp(feat_m, self.field(params, shape, init_l))
        if isinstance(similarity, FixedImageLNCC):
            return similarity(warped)
        return F.mse_loss(warped, feat_f) if kind == "mind" else similarity(warped, feat_f)

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
