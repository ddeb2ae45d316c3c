"""Sparse similarity evaluation for :class:`common.engines.instance_optimisation.InstanceOptimiser`.

``samples > 0`` evaluates the similarity at random voxels (``"mind"``, ``"ssd"``) or on random foreground cubes
(``"lncc"``) instead of the whole grid; the field is interpolated only where it is needed. The functions take the
optimiser (its residual parameterisation, integrator, window and cube size) as their first argument. See the
optimiser's module docstring for the estimator and its scaling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from common.blocks import sample_at
from common.losses.image import valid_lncc_map

__all__ = ["cube_lncc", "displacement_at", "foreground_indices", "sampled_similarity", "unravel"]


def unravel(flat: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Flat (C-order) voxel indices ``(n,)`` -> coordinates ``(D, n)``."""
    idx, rest = [], flat
    for s in reversed(shape):
        idx.append(rest % s)
        rest = rest // s
    return torch.stack(idx[::-1])


def foreground_indices(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Flat indices of the voxels where either image's first channel is above its minimum + 1 % of its range
    (every voxel when there is none)."""

    def above(t: torch.Tensor) -> torch.Tensor:
        lo, hi = t.min(), t.max()
        return t > lo + 0.01 * (hi - lo)

    mask = (above(moving[0, 0]) | above(fixed[0, 0])).flatten()
    idx = torch.nonzero(mask).flatten().cpu()
    return idx if idx.numel() else torch.arange(mask.numel())


def displacement_at(opt, params, shape, init_l, x: torch.Tensor) -> torch.Tensor:
    """Total displacement at voxel coordinates ``x`` ``(1, D, *P)`` of the level grid (dense parameters)."""
    dims = len(shape)
    r = opt._dense_residual(params)
    # r lives on the parameter grid, in its voxels: read it at x scaled into that grid, rescale the vectors
    scale = torch.tensor([(p - 1) / (s - 1) for p, s in zip(r.shape[2:], shape)], dtype=x.dtype, device=x.device)
    scale = scale.view(1, dims, *([1] * dims))
    u = sample_at(r, x * scale, padding_mode="border") / scale
    if init_l is not None:  # total = init + r, or init o exp(v): r(x) + init(x + r(x))
        at = x + u if opt.integrator is not None else x
        u = u + sample_at(init_l, at, padding_mode="border")
    return u


def sampled_similarity(opt, params, shape, init_l, feat_m, feat_f, generator, n: int) -> torch.Tensor:
    """Pointwise similarity at ``samples`` random voxels; the field is interpolated only there (dense grid)."""
    dims = len(shape)
    # voxels drawn with replacement, visited in memory order (far fewer cache misses than a random order)
    flat = torch.randint(0, int(torch.tensor(shape).prod()), (n,), generator=generator).sort().values
    idx = unravel(flat, shape).to(feat_f.device)  # (D, n)
    flat = flat.to(feat_f.device)
    x = idx.to(feat_f.dtype).view(1, dims, n, *([1] * (dims - 1)))  # the points as an (n, 1[, 1]) grid
    u = displacement_at(opt, params, shape, init_l, x)
    target = feat_f.flatten(2)[:, :, flat]
    moved = sample_at(feat_m, x + u, padding_mode="border").flatten(2)
    return ((moved - target) ** 2).mean()


def cube_lncc(opt, params, shape, init_l, mov, fix, foreground, generator, samples: int, kernel: int) -> torch.Tensor:
    """LNCC (window ``kernel``) on random foreground cubes, times the foreground fraction (an estimate of the dense mean)."""
    dims, side = len(shape), opt.patch_size
    cubes = max(1, samples // side**dims)
    centres = foreground[torch.randint(0, foreground.numel(), (cubes,), generator=generator)].sort().values
    size = torch.tensor(shape)
    corner = torch.minimum((unravel(centres, shape).T - side // 2).clamp(min=0), size - side)  # (K, D)
    offsets = torch.stack(torch.meshgrid(*[torch.arange(side)] * dims, indexing="ij"))  # (D, P, ..)
    idx = corner.T.reshape(dims, cubes, *([1] * dims)) + offsets.unsqueeze(1)  # (D, K, P, ..)
    idx = idx.reshape(dims, cubes * side, *([side] * (dims - 1))).to(fix.device)
    flat = torch.zeros_like(idx[0])
    for axis, s in enumerate(shape):
        flat = flat * s + idx[axis]
    x = idx.to(fix.dtype).unsqueeze(0)  # (1, D, K*P, P, ..)
    u = displacement_at(opt, params, shape, init_l, x)
    channels = fix.shape[1]

    def per_cube(t: torch.Tensor) -> torch.Tensor:  # (1, C, K*P, P, ..) -> (K, C, P, P, ..)
        return t.reshape(channels, cubes, *([side] * dims)).transpose(0, 1)

    moved = per_cube(sample_at(mov, x + u, padding_mode="border"))
    target = per_cube(fix.flatten(2)[:, :, flat.flatten()])
    fraction = foreground.numel() / float(fix[0, 0].numel())
    return valid_lncc_map(moved, target, kernel).mean() * fraction
