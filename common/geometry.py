"""Geometry between a user's images and a network's grid (world coordinates via NIfTI/RAS affines).

A bundle was trained on arrays of one orientation (axis codes, e.g. ``"LIA"``) and one voxel spacing. For a
moving/fixed pair of any orientation and spacing, inference:

0. optionally block-averages an image much finer than the training data (:func:`block_average`, ``data_spacing``):
   the 2 mm training data were made from 1 mm maps by 2x2x2 block means, so a 1 mm input gets the same
   anti-aliasing before anything is resampled (without it a 4 mm network would see every fourth 1 mm voxel);
1. builds the **network grid** from the fixed image (:func:`network_grid`): the fixed grid reoriented to the
   training axis codes (a permutation/flip, no interpolation), resampled to the training spacing over the
   same physical extent, then padded/cropped symmetrically to a multiple of ``multiple`` voxels or to a fixed
   shape;
2. resamples both images onto it through world coordinates (:func:`resample_to_grid`), so moving and fixed
   may have different grids;
3. runs the network, then maps the displacement back to the fixed image's own grid
   (:func:`ddf_to_fixed_grid`): vectors are converted through mm (so they are rescaled and re-axed) and the
   result is a :mod:`common.conventions` DDF in voxels of the fixed grid;
4. warps the ORIGINAL moving image in the fixed geometry (:func:`warp_to_fixed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import nibabel as nib
import numpy as np
import torch
from monai.data.utils import compute_shape_offset, zoom_affine
from scipy import ndimage

from common.blocks.warp import sample_at, sample_labels_at
from common.conventions import identity_grid
from common.io.convert import voxel_to_physical

__all__ = [
    "GRID_MODES",
    "check_grid_mode",
    "pool_factors",
    "block_average",
    "network_grid",
    "grid_coords",
    "resample_to_grid",
    "resample_array",
    "ddf_to_fixed_grid",
    "warp_to_fixed",
    "warp_labels_to_fixed",
    "same_grid",
    "world_map_ddf",
]


GRID_MODES = ("fit_extent", "exact_spacing")


class GridLike(Protocol):
    """A target grid: a 4x4 voxel-to-world ``affine`` and a 3D ``shape``."""

    affine: np.ndarray
    shape: tuple[int, int, int]


def pool_factors(affine: np.ndarray, data_spacing: float | None) -> tuple[int, ...]:
    """Per array axis, the integer ``round(data_spacing / voxel spacing)`` when it is at least 2, else 1."""
    aff = np.asarray(affine, dtype=np.float64)
    dims = aff.shape[0] - 1
    if data_spacing is None:
        return (1,) * dims
    spacing = np.sqrt((aff[:dims, :dims] ** 2).sum(0))
    return tuple(max(1, int(np.floor(float(data_spacing) / s + 0.5))) if s > 0 else 1 for s in spacing)


def block_average(image: torch.Tensor, affine: np.ndarray, factors: Sequence[int]) -> tuple[torch.Tensor, np.ndarray]:
    """Mean of ``f_0 x f_1 (x f_2)`` voxel blocks of ``image`` ``(B, C, *S)`` and the affine of the block grid.

    Block ``i`` holds voxels ``f i .. f i + f - 1`` of each axis and sits at their centre (``f i + (f - 1) / 2``);
    voxels left over at the far end of an axis (``S mod f``) are dropped. The same rule as the training data
    (``common.data.brain.template.downsample_image_2x``, 2x2x2 means of the 1 mm grid). Factors of 1 change
    nothing.
    """
    factors = tuple(int(f) for f in factors)
    aff = np.asarray(affine, dtype=np.float64)
    dims = len(factors)
    if all(f == 1 for f in factors):
        return image, aff
    size = [(n // f) * f for n, f in zip(image.shape[2:], factors)]
    if min(size) == 0:
        raise ValueError(f"block_average: image {tuple(image.shape[2:])} is smaller than one block {factors}.")
    crop = image[(slice(None), slice(None), *[slice(0, n) for n in size])]
    pool = (torch.nn.functional.avg_pool2d, torch.nn.functional.avg_pool3d)[dims - 2]
    pooled = pool(crop.float(), kernel_size=factors, stride=factors)
    step = np.eye(dims + 1)
    step[:dims, :dims] = np.diag(factors)
    step[:dims, dims] = [(f - 1) / 2.0 for f in factors]
    return pooled, aff @ step


def check_grid_mode(grid_mode: str, caller: str) -> None:
    """Raise a clear ``ValueError`` unless ``grid_mode`` is one of :data:`GRID_MODES` (see :func:`network_grid`)."""
    if grid_mode not in GRID_MODES:
        raise ValueError(f"{caller}: `grid_mode` must be 'fit_extent' or 'exact_spacing', got {grid_mode!r}.")


def network_grid(
    fixed_affine: np.ndarray,
    fixed_shape: Sequence[int],
    spacing: Sequence[float],
    axcodes: str | None = None,
    multiple: int = 16,
    shape: Sequence[int] | None = None,
    grid_mode: str = "fit_extent",
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Affine and shape of the grid the network runs on.

    Args:
        fixed_affine: ``(D+1, D+1)`` voxel-to-world (RAS mm) affine of the fixed image.
        fixed_shape: spatial shape of the fixed image.
        spacing: training voxel spacing in mm, ``D`` numbers (in the training axis order).
        axcodes: training orientation codes (``"LIA"``, ``"RAS"``, ...); None keeps the fixed orientation.
        multiple: pad/crop each axis to a multiple of this (ignored when ``shape`` is given).
        shape: exact network shape (pad/crop symmetrically around the fixed image centre).
        grid_mode: how the resampled grid covers the fixed image before padding/cropping.
            ``"fit_extent"``: the first and last voxel centres stay where they are and the spacing is adjusted
            slightly so that a whole number of steps fits between them (e.g. 80 voxels at 2 mm -> 41 voxels of
            3.95 mm). ``"exact_spacing"``: the grid MONAI ``Spacingd`` builds (its own ``zoom_affine`` and
            ``compute_shape_offset``): the first voxel centre stays, the spacing is exactly ``spacing`` and the
            size is the rounded number of steps plus one (80 voxels at 2 mm -> 40 voxels of 4 mm, the centres
            of every second voxel). A network trained on arrays that ``Spacingd``
            downsampled must see that same grid at inference: same sampling positions, same amount of padding.

    Returns:
        ``(affine, shape)`` of the network grid.
    """
    fixed_affine = np.asarray(fixed_affine, dtype=np.float64)
    dims = len(fixed_shape)
    if fixed_affine.shape != (dims + 1, dims + 1):
        raise ValueError(
            f"network_grid: affine {fixed_affine.shape} does not fit a {dims}D shape {tuple(fixed_shape)}."
        )
    if len(spacing) != dims or min(spacing) <= 0:
        raise ValueError(f"network_grid: `spacing` must be {dims} positive numbers, got {tuple(spacing)}.")
    aff, shp = fixed_affine, np.array(fixed_shape, dtype=int)
    if axcodes is not None:
        if len(axcodes) != dims:
            raise ValueError(f"network_grid: axcodes {axcodes!r} do not match {dims} dims.")
        if dims == 3:
            ornt = nib.orientations.io_orientation(aff)
            target = nib.orientations.axcodes2ornt(tuple(axcodes))
            transform = nib.orientations.ornt_transform(ornt, target)
            aff = aff @ nib.orientations.inv_ornt_aff(transform, tuple(shp))
            shp = shp[transform[:, 0].astype(int)]
    check_grid_mode(grid_mode, "network_grid")
    if grid_mode == "exact_spacing":  # MONAI's own rule (Spacing): zoom the affine, then its shape and origin
        zoomed = zoom_affine(aff, np.asarray(spacing, dtype=float), diagonal=False)
        new_shape, offset = compute_shape_offset(shp, aff, zoomed)
        zoomed[:dims, dims] = offset
        aff, new_shape = zoomed, np.asarray(new_shape, dtype=int)
    else:
        extent = (shp - 1) * np.sqrt((aff[:dims, :dims] ** 2).sum(0))
        new_shape = np.maximum(np.floor(extent / np.asarray(spacing, dtype=float) + 0.5).astype(int) + 1, 2)
        scale = np.where(shp > 1, (shp - 1) / np.maximum(new_shape - 1, 1), 1.0)
        aff = aff @ np.diag([*scale, 1.0])
    if shape is not None:
        target_shape = np.array(shape, dtype=int)
        if len(target_shape) != dims:
            raise ValueError(f"network_grid: `shape` {tuple(shape)} must have {dims} entries.")
    else:
        target_shape = (np.ceil(new_shape / multiple) * multiple).astype(int)
    # symmetric pad (positive) or crop (negative) around the centre: shift the origin by -before voxels
    before = (target_shape - new_shape) // 2
    shift = np.eye(dims + 1)
    shift[:dims, dims] = -before
    aff = aff @ shift
    return aff, tuple(int(s) for s in target_shape)


def grid_coords(
    target_affine: np.ndarray, target_shape: Sequence[int], source_affine: np.ndarray, dtype=torch.float32
) -> torch.Tensor:
    """Voxel coordinates in the source grid of every voxel centre of the target grid, ``(1, D, *target_shape)``."""
    mapping = np.linalg.inv(np.asarray(source_affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    return _affine_coords(mapping, target_shape).to(dtype)


def _affine_coords(
    mapping: np.ndarray, shape: Sequence[int], ddf: torch.Tensor | None = None, first: int = 0
) -> torch.Tensor:
    """``L (x + u(x)) + t`` for every voxel ``x`` of ``shape``, float64 ``(B, D, *shape)`` (``B`` = 1 without ``u``).

    Built one component at a time with broadcast in-place adds, so the only full-size allocation is the
    result (the identity grid and ``x + u`` are never materialised: ~0.3 GB less at 1 mm brain size). ``first``:
    index of the block's first voxel along axis 0 (a slab ``first : first + shape[0]`` of a larger grid; ``ddf`` is
    then that slab's field), with the same values as the whole grid's coordinates there.
    """
    dims = len(shape)
    device = ddf.device if ddf is not None else None
    axes = [
        torch.arange(n, dtype=torch.float64, device=device).view(*([1] * k), n, *([1] * (dims - k - 1)))
        for k, n in enumerate(shape)
    ]
    if first:
        axes[0] = axes[0] + float(first)
    batch = 1 if ddf is None else ddf.shape[0]
    out = torch.empty((batch, dims, *shape), dtype=torch.float64, device=device)
    for b in range(batch):
        for i in range(dims):
            acc = out[b, i]
            acc.fill_(float(mapping[i, dims]))
            for j in range(dims):
                c = float(mapping[i, j])
                if c == 0.0:
                    continue
                acc.add_(axes[j], alpha=c)
                if ddf is not None:
                    acc.add_(ddf[b, j], alpha=c)  # promoted to float64 element-wise, no converted copy
    return out


def resample_to_grid(
    image: torch.Tensor,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: Sequence[int],
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    slab: int = 16,
) -> torch.Tensor:
    """Resample ``image`` ``(B, C, *S)`` from its grid onto another grid through world coordinates, ``slab`` target
    planes (axis 0) at a time (float64 coordinates never exist whole; the same values as in one pass)."""
    shape = tuple(int(n) for n in target_shape)
    src = image.to(torch.float64)
    dtype = image.dtype if image.is_floating_point() else torch.float32
    out = torch.empty((image.shape[0], image.shape[1], *shape), dtype=dtype, device=image.device)
    for a, b, coords in _slab_coords(source_affine, target_affine, shape, None, slab):
        out[:, :, a:b] = sample_at(src, coords.to(image.device), mode=mode, padding_mode=padding_mode).to(dtype)
    return out


def resample_array(
    array: np.ndarray, affine: np.ndarray, grid: GridLike, order: int = 1, world: np.ndarray | None = None
) -> np.ndarray:
    """Resample a NumPy volume (voxel-to-world ``affine``) onto ``grid`` with SciPy; zero outside the source.

    The data-preparation twin of :func:`resample_to_grid` (tensors, MONAI/torch sampling, used at inference):
    NumPy in and out, nearest neighbour keeps label codes and their dtype.

    Args:
        array: 3D source volume.
        affine: its 4x4 voxel-to-world (RAS, mm) matrix.
        grid: target grid (anything with ``affine`` and ``shape``, e.g. :class:`common.data.brain.template.Grid`).
        order: 1 (linear, images) or 0 (nearest, label maps).
        world: optional 4x4 world-to-world map from target to source points (an affine registration
            result, see :func:`common.data.brain.align.affine_align`); identity by default.
    """
    if np.asarray(array).ndim != 3:
        raise ValueError(f"resample_array: `array` must be 3D, got shape {np.shape(array)}.")
    world = np.eye(4) if world is None else np.asarray(world, dtype=np.float64)
    vox = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ world @ grid.affine
    src = np.asarray(array)
    if order == 0:
        out = ndimage.affine_transform(src, vox[:3, :3], vox[:3, 3], grid.shape, order=0, mode="constant", cval=0)
        return out.astype(src.dtype, copy=False)
    return ndimage.affine_transform(
        src.astype(np.float32, copy=False), vox[:3, :3], vox[:3, 3], grid.shape, order=order, mode="constant"
    )


def world_map_ddf(
    world: np.ndarray,
    fixed_affine: np.ndarray,
    fixed_shape: Sequence[int],
    target_affine: np.ndarray | None = None,
    pre_ddf: np.ndarray | None = None,
) -> np.ndarray:
    """Voxel displacement of a world-space map: fixed voxel ``x`` -> target voxel ``T^-1 W F (x + u(x)) - x``.

    Args:
        world: ``(D + 1, D + 1)`` map of world (RAS mm) points, fixed side -> target side (e.g. an affine
            registration's fixed-to-moving matrix).
        fixed_affine / fixed_shape: the grid the displacement lives on (``F``).
        target_affine: the grid whose voxels the displacement points into (``T``; default ``F``).
        pre_ddf: optional ``(D, *S)`` displacement (fixed voxels) applied before ``W`` (composition ``W o (x + u)``).

    Returns:
        ``(D, *S)`` float32 displacement in voxels (of the target grid when it differs).
    """
    dims = len(fixed_shape)
    f = np.asarray(fixed_affine, dtype=np.float64)
    t = f if target_affine is None else np.asarray(target_affine, dtype=np.float64)
    mapping = np.linalg.inv(t) @ np.asarray(world, dtype=np.float64) @ f
    idx = identity_grid(fixed_shape, dtype=torch.float64).numpy()[0].reshape(dims, -1)
    pos = idx if pre_ddf is None else idx + np.asarray(pre_ddf, dtype=np.float64).reshape(dims, -1)
    out = mapping[:dims, :dims] @ pos + mapping[:dims, dims:] - idx
    return out.reshape(dims, *fixed_shape).astype(np.float32)


def ddf_to_fixed_grid(
    ddf_net: torch.Tensor, net_affine: np.ndarray, fixed_affine: np.ndarray, fixed_shape: Sequence[int], slab: int = 16
) -> torch.Tensor:
    """Map a displacement from the network grid to the fixed image's own grid (voxels of the fixed grid).

    The world displacement ``d(p)`` is interpolated at each fixed voxel centre (border extrapolation outside the
    network grid) and expressed in fixed voxels: ``u_fixed(x) = M_fixed^-1 d(A_fixed x)``, ``slab`` fixed planes
    (axis 0) at a time (0.5 GB less at 1 mm; every voxel gets the value of the whole-grid computation)."""
    dims = ddf_net.shape[1]
    d_world = voxel_to_physical(ddf_net.to(torch.float64), net_affine)  # A_net u (RAS mm), on the network grid
    inv = torch.from_numpy(np.linalg.inv(np.asarray(fixed_affine, dtype=np.float64)[:dims, :dims])).to(d_world.device)
    shape = tuple(int(n) for n in fixed_shape)
    out = torch.empty((ddf_net.shape[0], dims, *shape), dtype=ddf_net.dtype, device=ddf_net.device)
    for a, b, coords in _slab_coords(net_affine, fixed_affine, shape, None, slab):
        d_at_fixed = sample_at(d_world, coords.to(ddf_net.device), mode="bilinear", padding_mode="border")
        out[:, :, a:b] = torch.einsum("ij,bj...->bi...", inv, d_at_fixed).to(ddf_net.dtype)
    return out


def warp_to_fixed(
    moving: torch.Tensor,
    moving_affine: np.ndarray,
    ddf_fixed: torch.Tensor | None,
    fixed_affine: np.ndarray,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    slab: int = 32,
    fixed_shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """Warp the moving image (its own grid) into the fixed geometry: ``out(x) = moving(A_m^-1 (A_f (x + u(x))))``.

    The fixed grid goes ``slab`` planes (along axis 0) at a time, so the float64 sampling coordinates of a 1 mm
    brain never exist all at once (33 MB per slab instead of 0.33 GB); every voxel's value is the same.
    ``ddf_fixed=None`` means no displacement (then ``fixed_shape`` is required); an image already on the fixed grid
    is then returned as it is (float32), without resampling.
    """
    if ddf_fixed is None:
        if fixed_shape is None:
            raise ValueError("warp_to_fixed: give `fixed_shape` when `ddf_fixed` is None.")
        if same_grid(moving_affine, moving.shape[2:], fixed_affine, fixed_shape):
            return moving.to(torch.float32).clone()
    shape = tuple(int(n) for n in (fixed_shape if ddf_fixed is None else ddf_fixed.shape[2:]))
    batch = moving.shape[0] if ddf_fixed is None else ddf_fixed.shape[0]
    mov = moving.to(torch.float64)
    out = torch.empty((batch, moving.shape[1], *shape), dtype=torch.float32, device=moving.device)
    for a, b, coords in _slab_coords(moving_affine, fixed_affine, shape, ddf_fixed, slab):
        out[:, :, a:b] = sample_at(mov, coords, mode=mode, padding_mode=padding_mode).to(torch.float32)
    return out


def _slab_coords(moving_affine, fixed_affine, shape, ddf_fixed, slab):
    """``(a, b, coords)`` for slabs ``a:b`` of the fixed grid along axis 0: moving-grid voxel coordinates (float64)
    of ``x + u(x)`` (of ``x`` when ``ddf_fixed`` is None), the same values as for the whole grid at once."""
    mapping = np.linalg.inv(np.asarray(moving_affine, dtype=np.float64)) @ np.asarray(fixed_affine, dtype=np.float64)
    slab = max(1, int(slab))
    for a in range(0, shape[0], slab):
        b = min(a + slab, shape[0])
        part = None if ddf_fixed is None else ddf_fixed[:, :, a:b]
        yield a, b, _affine_coords(mapping, (b - a, *shape[1:]), part, first=a)


def warp_labels_to_fixed(
    labels: np.ndarray,
    moving_affine: np.ndarray,
    ddf_fixed: torch.Tensor | None,
    fixed_affine: np.ndarray,
    fixed_shape: Sequence[int] | None = None,
    block: int = 1 << 20,
) -> np.ndarray:
    """Warp a label map of any integer codes (its own grid) into the fixed geometry; returns codes, ``(*S_fixed)``.

    Each class's one-hot channel is interpolated linearly and the largest wins (outside the moving image: the
    lowest code, usually background), computed from the grid corners around each point
    (:func:`common.blocks.sample_labels_at`, ``block`` output voxels at a time). ``ddf_fixed=None`` means no
    displacement (labels only resampled into the fixed geometry; then ``fixed_shape`` is required); when the
    label map already lies on the fixed grid that is the map itself, returned without resampling.
    """
    labels = np.rint(np.asarray(labels)).astype(np.int64)
    if ddf_fixed is None:
        if fixed_shape is None:
            raise ValueError("warp_labels_to_fixed: give `fixed_shape` when `ddf_fixed` is None.")
        if same_grid(moving_affine, labels.shape, fixed_affine, fixed_shape):
            return labels.copy()
    codes = np.unique(labels)
    idx = torch.as_tensor(np.searchsorted(codes, labels))[None, None]
    shape = tuple(int(n) for n in (fixed_shape if ddf_fixed is None else ddf_fixed.shape[2:]))
    out = np.empty(shape, dtype=codes.dtype)
    slab = max(1, block // max(1, int(np.prod(shape[1:]))))  # coordinates of about `block` voxels at a time
    for a, b, coords in _slab_coords(moving_affine, fixed_affine, shape, ddf_fixed, slab):
        out[a:b] = codes[sample_labels_at(idx, coords, num_classes=len(codes), block=block)[0, 0].cpu().numpy()]
    return out


def same_grid(
    affine_a: np.ndarray, shape_a: Sequence[int], affine_b: np.ndarray, shape_b: Sequence[int], atol: float = 1e-6
) -> bool:
    """Whether two voxel grids coincide: same shape and the same affine (to ``atol`` mm); resampling from one to
    the other is then the identity."""
    a, b = np.asarray(affine_a, dtype=np.float64), np.asarray(affine_b, dtype=np.float64)
    return (
        tuple(int(s) for s in shape_a) == tuple(int(s) for s in shape_b)
        and a.shape == b.shape
        and bool(np.allclose(a, b, rtol=0.0, atol=atol))
    )
