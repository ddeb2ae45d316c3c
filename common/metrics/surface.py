"""Surface distances between label maps: HD95 and average symmetric surface distance (ASSD), in mm.

Definition used (the border-voxel form of the DeepMind ``surface-distance`` metrics, as in MONAI and
the Learn2Reg tables):

* the surface of a binary mask ``M`` is its border voxels, ``M and not erode(M)`` with the
  face-connected (6-/4-neighbour) structuring element; voxels touching the image edge are border;
* the directed distances ``d(A -> B)`` are, for each surface voxel of ``A``, the Euclidean distance in mm
  to the nearest surface voxel of ``B`` (``scipy.ndimage.distance_transform_edt`` with
  ``sampling=spacing``, on the bounding box of ``A | B`` grown by one voxel, which gives the same values
  as the full image and is much cheaper);
* ``HD_p = max(P_p(d(A -> B)), P_p(d(B -> A)))``, ``P_p`` NumPy's linear-interpolation percentile
  (directed percentiles first, then the maximum: the "robust Hausdorff" of DeepMind's package);
* ``ASSD = (sum d(A -> B) + sum d(B -> A)) / (|surf A| + |surf B|)``.

Why not DeepMind's package or MONAI directly: DeepMind's surfels are voxel corners weighted by
marching-cubes areas (not installable here without a new dependency, and slightly different values);
MONAI's ``compute_hausdorff_distance`` matches the definition above (tests cross-check it) but works on
one-hot ``(B, C, *S)`` tensors, so 35 brain labels would need a 35-channel copy of the volume. This
module works label by label on cropped boxes instead.

Empty labels: a label absent from ``ref`` or from the presence map (``moving`` if given, else ``pred``)
is skipped (Learn2Reg rule, as in :func:`common.metrics.overlap.dice_per_label`) and does not appear in
the result. If ``moving`` is given and the label vanished from ``pred`` only, the distance is undefined
and reported as ``nan`` (the DeepMind package returns ``inf`` there); means use ``nanmean``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from common.metrics._validation import label_array, same_shape, scored_labels, spacing_tuple, squeeze_leading, to_numpy

__all__ = ["surface_distances", "hd95", "assd", "mean_hd95"]


def _dims(arr: np.ndarray, spacing: float | Sequence[float] | None) -> int:
    """Spatial rank: ``len(spacing)`` when the map fits it (leading singleton axes dropped), else the
    map's rank after dropping leading singleton axes beyond 3 (so a bad spacing is reported as such)."""
    if spacing is not None and not isinstance(spacing, int | float):
        n = len(np.asarray(spacing).ravel())
        if n <= arr.ndim and all(s == 1 for s in arr.shape[: arr.ndim - n]):
            return n
    a = arr
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    return a.ndim


def _border(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    mask_a: Any, mask_b: Any, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances ``(d(A -> B), d(B -> A))`` in mm between two binary masks.

    Args:
        mask_a: binary mask (non-zero = inside), 2D or 3D, ``numpy.ndarray`` or ``torch.Tensor``.
        mask_b: binary mask of the same shape.
        spacing: voxel size in mm per axis (array order), a scalar for isotropic, ``None`` for 1 mm.

    Returns:
        Two float64 vectors: one distance per surface voxel of ``A`` (resp. ``B``), unsorted. Both are
        empty when either mask is empty.

    Raises:
        ValueError: shape mismatch, wrong rank, bad spacing.
    """
    caller = "surface_distances"
    a = to_numpy(mask_a, "mask_a", caller)
    b = to_numpy(mask_b, "mask_b", caller)
    dims = _dims(a, spacing)
    a = squeeze_leading(a, dims, "mask_a", caller) != 0
    b = squeeze_leading(b, dims, "mask_b", caller) != 0
    same_shape(a, b, "mask_a", "mask_b", caller)
    sp = spacing_tuple(spacing, dims, caller)
    if dims not in (2, 3):
        raise ValueError(f"{caller}: masks must be 2D or 3D, got shape {a.shape}.")
    if not a.any() or not b.any():
        return np.zeros(0), np.zeros(0)
    return _surface_distances(a, b, sp)


def _surface_distances(a: np.ndarray, b: np.ndarray, sp: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    idx = np.nonzero(a | b)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    a, b = a[box], b[box]
    sa, sb = _border(a), _border(b)
    d_ab = ndimage.distance_transform_edt(~sb, sampling=sp)[sa]
    d_ba = ndimage.distance_transform_edt(~sa, sampling=sp)[sb]
    return d_ab.astype(np.float64), d_ba.astype(np.float64)


def _per_label(
    pred: Any,
    ref: Any,
    labels: Sequence[int] | None,
    spacing: float | Sequence[float] | None,
    moving: Any,
    caller: str,
    reduce: Callable[[np.ndarray, np.ndarray], float],
) -> tuple[dict[int, float], list[int]]:
    p = label_array(pred, "pred", caller)
    r = label_array(ref, "ref", caller)
    dims = _dims(r, spacing)
    if dims not in (2, 3):
        raise ValueError(f"{caller}: label maps must be 2D or 3D, got `ref` shape {r.shape}.")
    p = squeeze_leading(p, dims, "pred", caller)
    r = squeeze_leading(r, dims, "ref", caller)
    same_shape(p, r, "pred", "ref", caller)
    sp = spacing_tuple(spacing, dims, caller)
    presence = p if moving is None else label_array(moving, "moving", caller)
    codes, skipped = scored_labels(p, r, presence, labels)
    out: dict[int, float] = {}
    for c in codes:
        pm, rm = p == c, r == c
        if not pm.any():
            out[c] = float("nan")
            continue
        out[c] = reduce(*_surface_distances(pm, rm, sp))
    return out, sorted(skipped)


def hd95(
    pred: Any,
    ref: Any,
    labels: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    *,
    percentile: float = 95.0,
    moving: Any = None,
    return_skipped: bool = False,
) -> dict[int, float] | tuple[dict[int, float], list[int]]:
    """Per-label robust Hausdorff distance (95th percentile by default) in mm; see the module docstring.

    Args:
        pred: predicted / warped moving label map, 2D or 3D (leading singleton axes allowed).
        ref: reference / fixed label map, same shape.
        labels: codes to score; ``None``: non-zero codes present in either map.
        spacing: voxel size in mm per axis (array order); scalar for isotropic; ``None`` for 1 mm.
        percentile: in [0, 100]; 100 gives the classical Hausdorff distance.
        moving: optional unwarped moving label map for the presence test (Learn2Reg rule).
        return_skipped: also return the sorted list of skipped codes.

    Returns:
        ``{code: distance_mm}`` (``nan`` where ``pred`` lost a label present in ``ref`` and ``moving``),
        and the skipped codes if ``return_skipped``. Symmetric in ``pred`` and ``ref``.

    References:
        Nikolov et al., "Clinically applicable segmentation of head and neck anatomy for radiotherapy",
        J Med Internet Res 23(7), 2021 (surface-distance metrics).
    """
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"hd95: `percentile` must be in [0, 100], got {percentile}.")

    def reduce(d_ab: np.ndarray, d_ba: np.ndarray) -> float:
        return float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)))

    out, skipped = _per_label(pred, ref, labels, spacing, moving, "hd95", reduce)
    return (out, skipped) if return_skipped else out


def assd(
    pred: Any,
    ref: Any,
    labels: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    *,
    moving: Any = None,
    return_skipped: bool = False,
) -> dict[int, float] | tuple[dict[int, float], list[int]]:
    """Per-label average symmetric surface distance in mm (all surface voxels of both masks pooled).

    Arguments, returns and empty-label handling as in :func:`hd95`.
    """

    def reduce(d_ab: np.ndarray, d_ba: np.ndarray) -> float:
        return float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))

    out, skipped = _per_label(pred, ref, labels, spacing, moving, "assd", reduce)
    return (out, skipped) if return_skipped else out


def mean_hd95(
    pred: Any,
    ref: Any,
    labels: Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    *,
    moving: Any = None,
) -> float:
    """``nanmean`` of :func:`hd95` over the scored labels; ``nan`` when none is left."""
    values = [v for v in hd95(pred, ref, labels, spacing, moving=moving).values() if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")
