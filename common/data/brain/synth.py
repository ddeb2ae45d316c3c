"""Functional core of SynthMorph-style brain image synthesis from label maps (deterministic given parameters).

Every function here is a pure map from (inputs, parameters) to outputs; the random sampling of the
parameters lives in :mod:`common.transforms.brain`, so a sample can be replayed exactly.

Tensors are batched: images ``(B, 1, *S)``, label maps ``(B, 1, *S)`` holding FreeSurfer codes, fields
``(B, 3, *S)`` in voxels (:mod:`common.conventions`).

References:
    Hoffmann et al., "SynthMorph: learning contrast-invariant registration without acquired images",
    IEEE TMI 2022. Billot et al., "SynthSeg: segmentation of brain MRI scans of any contrast and resolution
    without retraining", Medical Image Analysis 2023.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter

from common.blocks import (
    BSplineTransformer,
    affine_to_ddf,
    compose_ddf,
    integrate_velocity,
    resize_flow,
    sample_labels_at,
)
from common.conventions import identity_grid

__all__ = [
    "labels_to_image",
    "bias_field",
    "gaussian_blur",
    "normalise_gamma",
    "add_noise",
    "mask_background",
    "affine_matrix",
    "deformation_field",
    "warp_label_map",
]


def _check_batched(x: torch.Tensor, name: str, caller: str, channels: int | None = 1) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{caller}: `{name}` must be a (B, C, *S) tensor with 2 or 3 spatial dims, got {shape}.")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{caller}: `{name}` must have {channels} channel(s), got shape {tuple(x.shape)}.")


def _codes(labels: torch.Tensor, caller: str) -> torch.Tensor:
    codes = labels.round().long() if labels.is_floating_point() else labels.long()
    if codes.numel() and codes.min() < 0:
        raise ValueError(f"{caller}: label map holds negative codes (min {int(codes.min())}).")
    return codes


def labels_to_image(labels: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Gaussian mixture image: voxel intensity ~ N(means[code], stds[code]**2), independently per voxel.

    Args:
        labels: ``(B, 1, *S)`` FreeSurfer codes.
        means: ``(K,)`` mean intensity per code (lookup table indexed by code, K > max code).
        stds: ``(K,)`` standard deviation per code (0 gives a piecewise-constant image).
        seed: seed of the per-voxel noise.

    Returns:
        ``(B, 1, *S)`` float32 image.
    """
    _check_batched(labels, "labels", "labels_to_image")
    codes = _codes(labels, "labels_to_image")
    means = torch.as_tensor(means, dtype=torch.float32, device=labels.device).flatten()
    stds = torch.as_tensor(stds, dtype=torch.float32, device=labels.device).flatten()
    if means.shape != stds.shape:
        raise ValueError(f"labels_to_image: `means` {tuple(means.shape)} and `stds` {tuple(stds.shape)} differ.")
    if codes.numel() and int(codes.max()) >= means.numel():
        raise ValueError(
            f"labels_to_image: label code {int(codes.max())} has no intensity (lookup tables have {means.numel()} entries)."
        )
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(codes.shape, generator=gen, dtype=torch.float32).to(labels.device)
    return means[codes] + stds[codes] * noise


def bias_field(coefficients: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Smooth multiplicative bias field ``exp(upsample(coefficients))``.

    Args:
        coefficients: ``(B, 1, *C)`` log-field on a coarse grid spanning the image (corners aligned).
        shape: image spatial shape ``S``.

    Returns:
        ``(B, 1, *S)`` positive field (1 = no bias).
    """
    _check_batched(coefficients, "coefficients", "bias_field")
    mode = "trilinear" if coefficients.ndim == 5 else "bilinear"
    log_field = F.interpolate(coefficients.float(), size=tuple(int(s) for s in shape), mode=mode, align_corners=True)
    return torch.exp(log_field)


def gaussian_blur(image: torch.Tensor, sigma: Sequence[float] | float) -> torch.Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` (voxels, per axis); 0 leaves an axis as is."""
    _check_batched(image, "image", "gaussian_blur", channels=None)
    dims = image.ndim - 2
    sig = [float(sigma)] * dims if np.isscalar(sigma) else [float(s) for s in sigma]
    if len(sig) != dims or min(sig) < 0:
        raise ValueError(f"gaussian_blur: `sigma` must be >= 0, one per spatial axis ({dims}), got {sigma}.")
    if max(sig) == 0:
        return image
    return GaussianFilter(dims, [max(s, 1e-6) for s in sig]).to(image.device)(image.float())


def normalise_gamma(image: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Min-max normalise each image of the batch to [0, 1], then raise to ``gamma`` (> 0)."""
    _check_batched(image, "image", "normalise_gamma", channels=None)
    if not gamma > 0:
        raise ValueError(f"normalise_gamma: `gamma` must be > 0, got {gamma}.")
    flat = image.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (image.ndim - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (image.ndim - 1)))
    out = (image - lo) / (hi - lo).clamp_min(1e-8)
    return out.clamp(0, 1) ** float(gamma)


def add_noise(image: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Add white Gaussian noise of standard deviation ``std`` (image units), reproducible by ``seed``."""
    if std < 0:
        raise ValueError(f"add_noise: `std` must be >= 0, got {std}.")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(image.shape, generator=gen, dtype=torch.float32).to(image.device)
    return image + float(std) * noise


def mask_background(image: torch.Tensor, labels: torch.Tensor, background: Sequence[int] = (0,)) -> torch.Tensor:
    """Set ``image`` to 0 where ``labels`` holds a background code (skull-stripped look)."""
    codes = _codes(labels, "mask_background")
    bg = torch.isin(codes, torch.as_tensor(list(background), device=codes.device))
    return image.masked_fill(bg, 0.0)


def affine_matrix(
    rotation: Sequence[float] = (0.0, 0.0, 0.0),
    scale: Sequence[float] = (1.0, 1.0, 1.0),
    shear: Sequence[float] = (0.0, 0.0, 0.0),
    translation: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """``(3, 4)`` matrix ``[A | t]`` in centred voxel coordinates (see :func:`common.blocks.affine_to_ddf`).

    Args:
        rotation: angles in degrees about array axes 0, 1, 2 (applied in that order).
        scale: per-axis scale factors (> 0).
        shear: shear coefficients (axis pairs 0-1, 0-2, 1-2).
        translation: voxels, array order.
    """
    if len(rotation) != 3 or len(scale) != 3 or len(shear) != 3 or len(translation) != 3:
        raise ValueError("affine_matrix: rotation, scale, shear and translation need 3 values each (3D).")
    if min(scale) <= 0:
        raise ValueError(f"affine_matrix: `scale` must be > 0, got {tuple(scale)}.")
    a, b, c = np.deg2rad(np.asarray(rotation, dtype=np.float64))
    r0 = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    r1 = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    r2 = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    sh = np.array([[1, shear[0], shear[1]], [0, 1, shear[2]], [0, 0, 1]], dtype=np.float64)
    m = r2 @ r1 @ r0 @ sh @ np.diag(np.asarray(scale, dtype=np.float64))
    return np.concatenate([m, np.asarray(translation, dtype=np.float64).reshape(3, 1)], axis=1)


def deformation_field(
    shape: Sequence[int],
    matrix: np.ndarray | torch.Tensor | None = None,
    control_points: np.ndarray | torch.Tensor | None = None,
    stride: int | Sequence[int] = 16,
    num_steps: int = 7,
    half_res: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dense displacement of a diffeomorphic B-spline SVF deformation composed with an affine map.

    ``warped(x) = moving(x + e(x) + a(x + e(x)))`` where ``e = exp(v)`` (scaling and squaring of the cubic
    B-spline velocity ``v`` given by ``control_points``) and ``a`` is the affine field of ``matrix``.

    Args:
        shape: spatial shape ``S`` (3D).
        matrix: ``(3, 4)`` affine in centred voxel coordinates, or None (identity).
        control_points: ``(3, *C)`` velocity control points in voxels of ``S``, or None (no elastic part).
        stride: control point spacing in voxels.
        num_steps: scaling-and-squaring steps.
        half_res: integrate the velocity on a half-resolution grid and resize the result back
            (:func:`common.blocks.resize_flow`); about 8x cheaper, and the velocity is smooth on the
            control-point scale anyway.

    Returns:
        ``(1, 3, *S)`` displacement in voxels.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"deformation_field: `shape` must have 3 entries, got {shape}.")
    ddf = torch.zeros((1, 3, *shape), dtype=dtype)
    if control_points is not None:
        cp = torch.as_tensor(np.asarray(control_points), dtype=dtype)
        if cp.ndim != 4 or cp.shape[0] != 3:
            raise ValueError(f"deformation_field: `control_points` must be (3, *C), got {tuple(cp.shape)}.")
        svf = BSplineTransformer(stride)(cp[None], shape)
        if half_res:
            half = tuple(max((n + 1) // 2, 2) for n in shape)
            ddf = resize_flow(integrate_velocity(resize_flow(svf, half), num_steps), shape)
        else:
            ddf = integrate_velocity(svf, num_steps)
    if matrix is not None:
        m = torch.as_tensor(np.asarray(matrix), dtype=dtype)
        if m.shape != (3, 4):
            raise ValueError(f"deformation_field: `matrix` must be (3, 4), got {tuple(m.shape)}.")
        affine = affine_to_ddf(m[None], shape)
        ddf = compose_ddf(affine, ddf) if control_points is not None else affine
    return ddf


def warp_label_map(labels: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Warp a map of arbitrary integer codes as one-hot linear interpolation would, without the one-hot channels.

    The class whose one-hot channel has the largest bilinearly interpolated weight, border padding, ties to the
    lower code: :func:`common.blocks.sample_labels_at` (only the corner classes around each point carry weight)
    on the consecutive re-indexing of the codes, at the points ``x + ddf(x)`` clamped to the grid (clamping the
    points is what border padding does). Memory does not grow with the number of codes (53 FreeSurfer codes).

    Args:
        labels: ``(B, 1, *S)`` integer codes (any values >= 0).
        ddf: ``(B or 1, D, *S)`` displacement in voxels.

    Returns:
        ``(B, 1, *S)`` warped codes, dtype of ``labels``.
    """
    _check_batched(labels, "labels", "warp_label_map")
    codes = _codes(labels, "warp_label_map")
    shape = tuple(codes.shape[2:])
    if ddf.ndim != codes.ndim or ddf.shape[1] != len(shape) or tuple(ddf.shape[2:]) != shape:
        raise ValueError(f"warp_label_map: `ddf` must be (B, {len(shape)}, *{shape}), got {tuple(ddf.shape)}.")
    values, inverse = torch.unique(codes, return_inverse=True)
    grid = identity_grid(shape, dtype=torch.float64, device=ddf.device)
    upper = torch.tensor([n - 1 for n in shape], dtype=torch.float64, device=ddf.device).view(1, -1, *[1] * len(shape))
    out = []
    for b in range(codes.shape[0]):
        points = (grid + ddf[b if ddf.shape[0] > 1 else 0][None].to(torch.float64)).clamp(min=0).minimum(upper)
        out.append(sample_labels_at(inverse[b : b + 1], points, num_classes=len(values)))
    return values[torch.cat(out)].to(labels.dtype)
