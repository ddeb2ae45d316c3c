"""THE displacement convention of this project. Every field in `common` and every bundle follows it.

A dense displacement field (DDF) ``u`` is a tensor of shape ``(B, D, *S)``:

* channels first, ``D == len(S)`` (2 for 2D, 3 for 3D);
* **units: voxels of the grid the field lives on** (millimetres only appear in metrics and file I/O,
  through the image spacing);
* component ``k`` is the displacement along tensor axis ``k + 2`` (array order, the order MONAI and
  nibabel load arrays in). The flip to ``grid_sample``'s x-y-z order lives in one private helper,
  :func:`_to_grid_sample_order`;
* direction: the field is defined on the **fixed** grid and pulls the moving image back,
  ``warped(x) = moving(x + u(x))``;
* sampling uses ``align_corners=True`` (voxel centres of the first and last voxel map to -1 and +1);
* resizing a field **rescales its vectors** so that the physical displacement is preserved:
  with ``align_corners=True`` a field resized from ``n`` to ``m`` voxels along an axis has that
  component multiplied by ``(m - 1) / (n - 1)``;
* stationary velocity fields (SVF) use the same units; scaling and squaring uses
  :data:`DEFAULT_INTEGRATION_STEPS` steps;
* the same convention is used by MONAI ``Warp``, VoxelMorph and the Learn2Reg evaluation scripts, so
  no conversion is needed at those edges. Conversions to other conventions (normalised grid, mm,
  Learn2Reg files, ITK displacement images) live in :mod:`common.io`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "ALIGN_CORNERS",
    "DEFAULT_INTEGRATION_STEPS",
    "check_ddf",
    "check_image_and_ddf",
    "identity_grid",
    "voxel_to_normalised",
    "normalised_to_voxel",
    "resize_scale_factors",
]

ALIGN_CORNERS: bool = True
DEFAULT_INTEGRATION_STEPS: int = 7


def _shape_str(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}"


def check_ddf(ddf: torch.Tensor, name: str = "ddf", caller: str = "check_ddf", finite: bool = True) -> int:
    """Validate a displacement field against the convention and return its spatial dimension.

    Args:
        ddf: displacement in voxels, shape ``(B, D, *S)`` with ``D == len(S)`` in {2, 3}.
        name: argument name used in error messages.
        caller: name of the public callable, prefixes error messages.
        finite: also reject NaN/Inf values.

    Raises:
        TypeError: ``ddf`` is not a tensor.
        ValueError: wrong rank, channel count not equal to spatial rank, or non-finite values.
    """
    if not isinstance(ddf, torch.Tensor):
        raise TypeError(f"{caller}: `{name}` must be a torch.Tensor, got {type(ddf).__name__}.")
    if ddf.ndim not in (4, 5):
        raise ValueError(
            f"{caller}: `{name}` must have shape (B, D, *S) with 2 or 3 spatial dims, got {_shape_str(ddf)}."
        )
    dims = ddf.ndim - 2
    if ddf.shape[1] != dims:
        raise ValueError(
            f"{caller}: `{name}` has {ddf.shape[1]} channels but {dims} spatial dims ({_shape_str(ddf)}); "
            f"a {dims}D displacement needs {dims} channels."
        )
    if finite and not torch.isfinite(ddf).all():
        raise ValueError(f"{caller}: `{name}` contains NaN or Inf values ({_shape_str(ddf)}).")
    return dims


def check_image_and_ddf(
    image: torch.Tensor,
    ddf: torch.Tensor,
    caller: str,
    image_name: str = "image",
    ddf_name: str = "ddf",
) -> int:
    """Validate that ``image`` (B, C, *S) can be warped by ``ddf`` (B, D, *S); return D."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{caller}: `{image_name}` must be a torch.Tensor, got {type(image).__name__}.")
    dims = check_ddf(ddf, ddf_name, caller)
    if image.ndim != ddf.ndim:
        raise ValueError(
            f"{caller}: `{image_name}` {_shape_str(image)} and `{ddf_name}` {_shape_str(ddf)} differ in rank; "
            f"a {dims}D field needs a {dims}D image of shape (B, C, *S)."
        )
    if image.shape[2:] != ddf.shape[2:]:
        raise ValueError(
            f"{caller}: spatial shapes differ: `{image_name}` {_shape_str(image)} vs `{ddf_name}` "
            f"{_shape_str(ddf)}; resample one onto the other's grid first."
        )
    if image.shape[0] != ddf.shape[0] and ddf.shape[0] != 1:
        raise ValueError(
            f"{caller}: batch sizes differ: `{image_name}` {_shape_str(image)} vs `{ddf_name}` {_shape_str(ddf)}."
        )
    return dims


def identity_grid(
    shape: Sequence[int], device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Voxel coordinates of a grid, shape ``(1, D, *shape)``, component k = index along axis k.

    Built per call (or cached per shape by the caller as a non-persistent buffer), never stored in
    checkpoints.
    """
    axes = [torch.arange(int(n), device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def voxel_to_normalised(ddf: torch.Tensor) -> torch.Tensor:
    """Displacement in voxels (array order) -> normalised units of ``align_corners=True`` (array order).

    A displacement of ``n - 1`` voxels along an axis of ``n`` voxels is 2 normalised units.
    """
    dims = check_ddf(ddf, caller="voxel_to_normalised", finite=False)
    scale = [2.0 / max(int(n) - 1, 1) for n in ddf.shape[2:]]
    s = torch.tensor(scale, dtype=ddf.dtype, device=ddf.device).view(1, dims, *([1] * dims))
    return ddf * s


def normalised_to_voxel(ddf: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`voxel_to_normalised`."""
    dims = check_ddf(ddf, caller="normalised_to_voxel", finite=False)
    scale = [max(int(n) - 1, 1) / 2.0 for n in ddf.shape[2:]]
    s = torch.tensor(scale, dtype=ddf.dtype, device=ddf.device).view(1, dims, *([1] * dims))
    return ddf * s


def resize_scale_factors(old_shape: Sequence[int], new_shape: Sequence[int]) -> list[float]:
    """Per-axis factor a voxel displacement is multiplied by when its field is resized (align_corners=True)."""
    if len(old_shape) != len(new_shape):
        raise ValueError(f"resize_scale_factors: rank mismatch {tuple(old_shape)} vs {tuple(new_shape)}.")
    out = []
    for n, m in zip(old_shape, new_shape):
        if n < 1 or m < 1:
            raise ValueError(
                f"resize_scale_factors: sizes must be positive, got {tuple(old_shape)} -> {tuple(new_shape)}."
            )
        out.append((m - 1) / (n - 1) if n > 1 else float(m) / float(n))
    return out


def _to_grid_sample_order(grid: torch.Tensor) -> torch.Tensor:
    """(B, D, *S) normalised array-order coordinates -> (B, *S, D) in grid_sample's (x, y[, z]) order."""
    dims = grid.shape[1]
    return grid.permute(0, *range(2, 2 + dims), 1).flip(-1)
