"""Instance-specific optimisation: fit a displacement (or velocity) field to one pair by gradient descent.

Used on its own (the toolkit-only demo, a classic iterative baseline) and after a network (Dalca et al. 2018
start from the network's velocity field). The field is parameterised on a grid ``grid_factor`` times coarser
than the images (smoother, cheaper) and resized to the image grid with rescaled vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from common.blocks import BSplineTransformer, VelocityIntegrator, control_grid_shape, resize_flow, warp

__all__ = ["InstanceOptimiser"]


class InstanceOptimiser:
    """Minimise ``image_loss(warp(moving, u), fixed) + reg_weight * regulariser(u)`` over a field ``u``.

    Args:
        image_loss: similarity loss module (minimised), e.g. :class:`common.losses.LocalNCCLoss`.
        regulariser: regulariser on the full-resolution displacement, e.g. :class:`common.losses.GradientRegulariser`.
        reg_weight: regularisation weight.
        iterations: optimisation steps.
        lr: Adam learning rate (field in voxels of the parameter grid).
        grid_factor: the parameter grid is the image grid divided by this (1 = full resolution).
        diffeomorphic: optimise a stationary velocity field integrated by scaling and squaring.
        bspline_stride: optimise cubic B-spline control points with this spacing (voxels) instead of a dense
            grid (the classic free-form deformation; ``grid_factor`` is then ignored).
        progress: show a tqdm progress bar.
    """

    def __init__(
        self,
        image_loss: nn.Module,
        regulariser: nn.Module,
        reg_weight: float = 1.0,
        iterations: int = 100,
        lr: float = 0.1,
        grid_factor: int = 2,
        diffeomorphic: bool = False,
        bspline_stride: int | None = None,
        progress: bool = True,
    ) -> None:
        if iterations < 0:
            raise ValueError(f"InstanceOptimiser: iterations must be >= 0, got {iterations}.")
        if grid_factor < 1:
            raise ValueError(f"InstanceOptimiser: grid_factor must be >= 1, got {grid_factor}.")
        self.image_loss, self.regulariser = image_loss, regulariser
        self.reg_weight, self.iterations, self.lr = float(reg_weight), int(iterations), float(lr)
        self.grid_factor, self.progress = int(grid_factor), progress
        self.integrator = VelocityIntegrator() if diffeomorphic else None
        self.bspline = BSplineTransformer(bspline_stride) if bspline_stride else None
        self.bspline_stride = bspline_stride
        self.history: list[float] = []
        self.seconds = 0.0

    def field(self, params: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """Displacement on the image grid from the parameters (integrated first if diffeomorphic)."""
        if self.bspline is not None:
            u = self.bspline(params, size)
            return self.integrator(u) if self.integrator is not None else u
        u = self.integrator(params) if self.integrator is not None else params
        return resize_flow(u, size)

    def __call__(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        init: torch.Tensor | None = None,
        callback: Callable[[int, float], None] | None = None,
    ) -> torch.Tensor:
        """Optimise for one pair.

        Args:
            moving, fixed: ``(1, C, *S)`` images on one grid.
            init: starting parameters ``(1, D, *S_param)`` (e.g. a network's velocity field), in voxels of the
                parameter grid; default zeros on ``S // grid_factor``.

        Returns:
            The optimised displacement ``(1, D, *S)`` in voxels of ``S`` (detached).
        """
        if moving.shape != fixed.shape:
            raise ValueError(
                f"InstanceOptimiser: moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must share a grid."
            )
        size = tuple(moving.shape[2:])
        dims = len(size)
        if init is None and self.bspline is not None:
            init = torch.zeros(
                1, dims, *control_grid_shape(size, self.bspline_stride), dtype=moving.dtype, device=moving.device
            )
        if init is None:
            coarse = tuple(max(2, s // self.grid_factor) for s in size)
            init = torch.zeros(1, dims, *coarse, dtype=moving.dtype, device=moving.device)
        params = init.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([params], lr=self.lr)
        start = time.perf_counter()
        self.history = []
        bar = tqdm(range(self.iterations), desc="instance optimisation", disable=not self.progress, leave=False)
        for step in bar:
            optimiser.zero_grad(set_to_none=True)
            ddf = self.field(params, size)
            loss = self.image_loss(warp(moving, ddf), fixed) + self.reg_weight * self.regulariser(ddf)
            loss.backward()
            optimiser.step()
            value = float(loss.detach())
            self.history.append(value)
            bar.set_postfix(loss=f"{value:.4f}")
            if callback is not None:
                callback(step, value)
        self.seconds = time.perf_counter() - start
        with torch.no_grad():
            return self.field(params, size).detach()
