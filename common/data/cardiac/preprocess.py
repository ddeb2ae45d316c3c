"""2D short-axis slice preprocessing shared by the ACDC reader, the bSSFP statistics and the phantom.

Three steps, applied in this order by every cardiac pipeline of the project so that real and synthetic
slices look alike: in-plane resampling to a fixed spacing (:func:`resample_inplane`), a fixed-size crop
around the heart (:func:`crop_center`, :func:`label_centroid`) and a percentile intensity normalisation
to [0, 1] (:func:`normalise_percentile`).

scipy's ``ndimage.zoom`` does the in-plane resampling instead of MONAI ``Spacing``: only the two
in-plane axes change, image and label get exactly the same output grid (``grid_mode=True`` keeps the
pixel areas aligned, so nearest-neighbour labels do not drift by half a pixel), and no affine
bookkeeping is needed for the 2D slices this project stores with a plain diagonal affine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "DEFAULT_PERCENTILES",
    "DIRECTIONS",
    "PAIR_KEYS",
    "crop_center",
    "label_centroid",
    "make_pairs",
    "normalise_percentile",
    "resample_inplane",
    "slice_affine",
]

DEFAULT_PERCENTILES: tuple[float, float] = (1.0, 99.0)
DIRECTIONS: tuple[str, str] = ("ED->ES", "ES->ED")
PAIR_KEYS: tuple[str, ...] = ("moving_image", "fixed_image", "moving_label", "fixed_label", "id")


def resample_inplane(
    array: np.ndarray, spacing: Sequence[float], new_spacing: float, is_label: bool = False
) -> np.ndarray:
    """Resample the first two axes of ``array`` from ``spacing`` to an isotropic ``new_spacing``.

    Args:
        array: ``(X, Y)`` or ``(X, Y, Z)`` array; axes after the second are left untouched.
        spacing: in-plane pixel size in mm, ``(sx, sy)`` (extra entries are ignored).
        new_spacing: target pixel size in mm.
        is_label: nearest-neighbour (labels) instead of linear interpolation (images).

    Returns:
        The resampled array, same dtype for labels, float32 for images.
    """
    if array.ndim < 2:
        raise ValueError(f"resample_inplane: expected an array with >= 2 axes, got shape {array.shape}.")
    if len(spacing) < 2 or min(spacing[0], spacing[1]) <= 0 or new_spacing <= 0:
        raise ValueError(f"resample_inplane: spacings must be positive, got {tuple(spacing)} -> {new_spacing}.")
    factors = [float(spacing[0]) / new_spacing, float(spacing[1]) / new_spacing] + [1.0] * (array.ndim - 2)
    if np.allclose(factors, 1.0, atol=1e-3):
        return array if is_label else array.astype(np.float32, copy=False)
    src = array if is_label else array.astype(np.float32, copy=False)
    return ndi.zoom(src, factors, order=0 if is_label else 1, mode="nearest", grid_mode=True)


def label_centroid(label: np.ndarray) -> tuple[float, ...] | None:
    """Centroid (array index units) of the non-zero voxels of ``label``; ``None`` if it is empty."""
    mask = np.asarray(label) > 0
    if not mask.any():
        return None
    return tuple(float(c) for c in ndi.center_of_mass(mask))


def crop_center(
    array: np.ndarray, center: Sequence[float] | None, size: int | Sequence[int], fill: float = 0.0
) -> np.ndarray:
    """Crop the first ``len(size)`` axes of ``array`` to ``size`` around ``center``, padding with ``fill``.

    Args:
        array: array whose leading axes are cropped (trailing axes are kept).
        center: crop centre in array index units (rounded to the nearest voxel); ``None`` = array centre.
        size: output size per cropped axis (an int means the same for the first two axes).
        fill: value for the parts of the crop that fall outside ``array``.
    """
    sizes = (int(size),) * 2 if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if any(s < 1 for s in sizes) or len(sizes) > array.ndim:
        raise ValueError(f"crop_center: invalid crop size {sizes} for an array of shape {array.shape}.")
    if center is None:
        center = [(n - 1) / 2.0 for n in array.shape[: len(sizes)]]
    out = np.full(sizes + array.shape[len(sizes) :], fill, dtype=array.dtype)
    src, dst = [], []
    for n, s, c in zip(array.shape, sizes, center):
        start = int(np.floor(float(c) - (s - 1) / 2.0 + 0.5))
        lo, hi = max(start, 0), min(start + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


def normalise_percentile(
    image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES, mask: np.ndarray | None = None
) -> np.ndarray:
    """Map the ``percentiles`` of ``image`` (inside ``mask`` if given) to 0 and 1 and clip to [0, 1].

    A constant image maps to zeros. Returns float32.
    """
    lo_p, hi_p = percentiles
    if not 0.0 <= lo_p < hi_p <= 100.0:
        raise ValueError(f"normalise_percentile: need 0 <= low < high <= 100, got {percentiles}.")
    img = np.asarray(image, dtype=np.float32)
    values = img[mask > 0] if mask is not None else img
    if values.size == 0:
        return np.zeros_like(img)
    lo, hi = np.percentile(values, [lo_p, hi_p])
    if hi - lo <= 1e-8 * max(abs(float(hi)), 1.0):
        return np.zeros_like(img)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def slice_affine(spacing_mm: float) -> np.ndarray:
    """Diagonal 4x4 affine used for the stored 2D slices (pixel size ``spacing_mm``, origin 0)."""
    return np.diag([float(spacing_mm), float(spacing_mm), 1.0, 1.0])


def make_pairs(
    ed_image: np.ndarray,
    es_image: np.ndarray,
    ed_label: np.ndarray,
    es_label: np.ndarray,
    base_id: str,
    directions: Sequence[str] = DIRECTIONS,
) -> list[dict[str, object]]:
    """Registration pair dicts with the keys :data:`PAIR_KEYS` for each direction.

    ``"ED->ES"`` means moving = ED, fixed = ES (the displacement lives on the ES grid); ``"ES->ED"`` the
    reverse. Images become ``(1, H, W)`` float32, labels ``(1, H, W)`` uint8; ids are
    ``f"{base_id}_ED-ES"`` / ``f"{base_id}_ES-ED"``.
    """
    frames = {
        "ED": (np.asarray(ed_image, np.float32)[None], np.asarray(ed_label, np.uint8)[None]),
        "ES": (np.asarray(es_image, np.float32)[None], np.asarray(es_label, np.uint8)[None]),
    }
    pairs = []
    for direction in directions:
        if direction not in DIRECTIONS:
            raise ValueError(f"make_pairs: direction must be one of {DIRECTIONS}, got {direction!r}.")
        moving, fixed = direction.split("->")
        pairs.append(
            {
                "moving_image": frames[moving][0],
                "fixed_image": frames[fixed][0],
                "moving_label": frames[moving][1],
                "fixed_label": frames[fixed][1],
                "id": f"{base_id}_{moving}-{fixed}",
            }
        )
    return pairs
