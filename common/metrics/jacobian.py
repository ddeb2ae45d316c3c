"""Regularity of a displacement field: Jacobian determinant, SDlogJ, % folding, non-diffeomorphic volume.

Fields follow :mod:`common.conventions`: displacement in voxels, component ``k`` along array axis ``k``,
given as one field ``(D, *S)`` or ``(1, D, *S)`` (``numpy.ndarray`` or ``torch.Tensor``); results are
NumPy arrays / Python floats computed in float64. All quantities are unitless (voxel units cancel in
``det(I + grad u)``), so no spacing is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.metrics._validation import ddf_array, mask_array

__all__ = [
    "jacobian_determinant",
    "sdlogj",
    "percent_folding",
    "non_diffeomorphic_volume_map",
    "ndv",
]

_Offsets = tuple[tuple[int, ...], tuple[int, ...]]


def _central_det(u: np.ndarray, caller: str, slab: int = 16) -> np.ndarray:
    """Central-difference ``det(I + grad u)`` of a validated ``(D, *S)`` field, in float64.

    Same scheme as :func:`common.blocks.jacobian.jacobian_matrix` (central differences inside, first-order
    one-sided at the edge; a test pins the equality) but with ``np.gradient`` and an explicit determinant:
    on a 160x224x192 field this takes ~3 s instead of ~8 s with ``torch.gradient`` + ``torch.linalg.det``.
    The field is processed in slabs of ``slab`` slices along axis 0, each with a one-slice halo, so the
    result is identical to the whole-volume computation while the D x D gradient arrays exist for one slab
    only (about 0.5 GB less at 1 mm brain size).
    """
    dims = u.shape[0]
    if min(u.shape[1:]) < 2:
        raise ValueError(f"{caller}: `ddf` needs at least 2 voxels along every axis, got grid {u.shape[1:]}.")
    n = u.shape[1]
    out = np.empty(u.shape[1:], dtype=np.float64)
    for a in range(0, n, slab):
        b = min(a + slab, n)
        lo, hi = max(a - 1, 0), min(b + 1, n)  # halo: central differences at the slab's own edges
        block = u[:, lo:hi].astype(np.float64)  # a float32 field is converted here, one slab at a time
        cols = []
        for j in range(dims):  # column j = d phi / d x_j
            col = np.stack([np.gradient(block[k], axis=j) for k in range(dims)])
            col[j] += 1.0
            cols.append(col)
        out[a:b] = _det(cols)[a - lo : a - lo + (b - a)]
    return out


def jacobian_determinant(ddf: Any) -> np.ndarray:
    """``det(I + grad u)`` per voxel with central differences (one-sided at the image edge).

    Same values as :func:`common.blocks.jacobian.jacobian_determinant`, computed in float64 NumPy.

    Args:
        ddf: displacement in voxels, ``(D, *S)`` or ``(1, D, *S)``, D in {2, 3}.

    Returns:
        float64 array of shape ``S``; values <= 0 mark folding.
    """
    u = ddf_array(ddf, "jacobian_determinant", float64=False)
    return _central_det(u, "jacobian_determinant")


def sdlogj(ddf: Any, crop: int = 2, det: np.ndarray | None = None) -> float:
    """Standard deviation of the log Jacobian determinant, Learn2Reg definition.

    ``SDlogJ = std(log(clip(det(I + grad u) + 3, 1e-9, 1e9)))`` over the voxels left after removing
    ``crop`` voxels at every border (central differences there are unaffected by the edge). The "+3"
    appears in every official Learn2Reg scorer: it keeps folded voxels (det <= 0) finite but also
    compresses the scale, so this is *not* the textbook std(log det J); report :func:`percent_folding`
    alongside. Zero, constant and affine fields give 0.

    Args:
        ddf: displacement in voxels, ``(D, *S)`` or ``(1, D, *S)``.
        crop: voxels removed at each border, >= 0.
        det: :func:`jacobian_determinant` of ``ddf`` when the caller has it already (shape ``S``).

    Raises:
        ValueError: bad field, negative ``crop`` or a crop that leaves no voxel.
    """
    if int(crop) != crop or crop < 0:
        raise ValueError(f"sdlogj: `crop` must be a non-negative integer, got {crop!r}.")
    u = ddf_array(ddf, "sdlogj", float64=False)
    shape = u.shape[1:]
    if any(n <= 2 * crop for n in shape):
        raise ValueError(f"sdlogj: `crop`={crop} leaves no voxel of the field's grid {tuple(shape)}.")
    det = _central_det(u, "sdlogj") if det is None else _given_det(det, shape, "sdlogj")
    x = det[tuple(slice(crop, n - crop) for n in shape)] + 3.0
    np.log(np.clip(x, 1e-9, 1e9, out=x), out=x)  # in place: one 1 mm-sized temporary instead of three
    return float(x.std())


def percent_folding(ddf: Any, mask: Any = None, det: np.ndarray | None = None) -> float:
    """Percentage of (masked) voxels with central-difference ``det(I + grad u) <= 0``.

    Args:
        ddf: displacement in voxels, ``(D, *S)`` or ``(1, D, *S)``.
        mask: optional region (non-zero = inside) of shape ``S``; default all voxels.
        det: :func:`jacobian_determinant` of ``ddf`` when the caller has it already (shape ``S``).
    """
    u = ddf_array(ddf, "percent_folding", float64=False)
    m = mask_array(mask, u.shape[1:], "percent_folding")
    det = _central_det(u, "percent_folding") if det is None else _given_det(det, u.shape[1:], "percent_folding")
    return float(100.0 * np.count_nonzero((det <= 0) & m) / np.count_nonzero(m))


def _given_det(det: Any, shape: tuple[int, ...], caller: str) -> np.ndarray:
    arr = np.asarray(det, dtype=np.float64)
    if arr.shape != tuple(shape):
        raise ValueError(f"{caller}: `det` has shape {arr.shape}, the field's grid is {tuple(shape)}.")
    return arr


def _schemes(dims: int) -> list[list[_Offsets]]:
    """Finite-difference schemes as columns ``phi(v + plus) - phi(v + minus)`` (see :func:`ndv`)."""
    eye = np.eye(dims, dtype=int)
    zero = (0,) * dims
    schemes: list[list[_Offsets]] = []
    for signs in np.ndindex(*([2] * dims)):  # 0 = forward, 1 = backward, per axis
        cols = []
        for k, s in enumerate(signs):
            ek = tuple(int(v) for v in eye[k])
            cols.append((ek, zero) if s == 0 else (zero, tuple(-v for v in ek)))
        schemes.append(cols)
    if dims == 3:
        pairs_1 = [(0, 1), (0, 2), (1, 2)]  # J1*: edges to the three "minus" face diagonals
        pairs_2 = [(0, 1), (1, 2), (0, 2)]  # J2*: edges to the three "plus" face diagonals
        schemes.append([(tuple(-int(v) for v in eye[i] + eye[j]), zero) for i, j in pairs_1])
        schemes.append([(tuple(int(v) for v in eye[i] + eye[j]), zero) for i, j in pairs_2])
    return schemes


def _det(cols: list[np.ndarray]) -> np.ndarray:
    if len(cols) == 2:
        a, b = cols
        return a[0] * b[1] - a[1] * b[0]
    a, b, c = cols
    return a[0] * (b[1] * c[2] - b[2] * c[1]) + a[1] * (b[2] * c[0] - b[0] * c[2]) + a[2] * (b[0] * c[1] - b[1] * c[0])


def non_diffeomorphic_volume_map(ddf: Any, chunk: int = 16) -> np.ndarray:
    """Per-voxel non-diffeomorphic volume (3D) or area (2D) in units of one voxel; see :func:`ndv`.

    Args:
        ddf: displacement in voxels, ``(D, *S)`` or ``(1, D, *S)``.
        chunk: slices along axis 0 processed at once (bounds memory on full-size volumes).

    Returns:
        float64 array of shape ``S``, values in [0, ...); 0 for a digitally diffeomorphic field.
    """
    u = ddf_array(ddf, "non_diffeomorphic_volume_map")
    dims, shape = u.shape[0], u.shape[1:]
    # deformation phi = x + u on a grid padded by one voxel; the displacement is edge-replicated
    phi = np.pad(u, [(0, 0)] + [(1, 1)] * dims, mode="edge")
    for k in range(dims):
        view = [1] * dims
        view[k] = -1
        phi[k] += np.arange(-1, shape[k] + 1, dtype=np.float64).reshape(view)
    # each |J| is D! times a signed simplex volume; two ways to split the voxel, so weight 1 / (2 D!)
    weight = 1.0 / (2.0 * (6.0 if dims == 3 else 2.0))
    schemes = _schemes(dims)
    out = np.zeros(shape, dtype=np.float64)
    step = max(int(chunk), 1)
    for a in range(0, shape[0], step):
        b = min(a + step, shape[0])

        def at(offset: tuple[int, ...], a: int = a, b: int = b) -> np.ndarray:
            sl = [slice(a + 1 + offset[0], b + 1 + offset[0])]
            sl += [slice(1 + o, 1 + o + n) for o, n in zip(offset[1:], shape[1:])]
            return phi[(slice(None), *sl)]

        for cols in schemes:
            det = _det([at(plus) - at(minus) for plus, minus in cols])
            out[a:b] += weight * np.maximum(-det, 0.0)
    return out


def ndv(ddf: Any, mask: Any = None) -> float:
    """Non-diffeomorphic volume (3D) / area (2D) as a percentage of the mask, Liu et al. 2024 (LUMIR).

    The deformation ``phi(x) = x + u(x)`` is a piecewise-linear map on a simplex split of every voxel
    cell, and folding is measured as the volume of simplices that ``phi`` turns inside out:

    * 3D: each cube is split into 5 tetrahedra in two ways (4 corner + 1 central each). The 8 corner
      tetrahedra around voxel ``v`` have Jacobians ``J_{s0 s1 s2}`` whose column ``k`` is the forward
      (``s_k = +``: ``phi(v + e_k) - phi(v)``) or backward (``-``: ``phi(v) - phi(v - e_k)``) difference;
      the two central ones are ``J1* = [phi(v-e0-e1) - phi(v), phi(v-e0-e2) - phi(v), phi(v-e1-e2) - phi(v)]``
      and ``J2* = [phi(v+e0+e1) - phi(v), phi(v+e1+e2) - phi(v), phi(v+e0+e2) - phi(v)]`` (identity:
      ``|J| = 1`` for corners, 2 for central ones).
    * 2D: 4 schemes ``J_{s0 s1}`` (the corner triangles of the two diagonal splits of a pixel).

    ``NDV = sum_{v in mask} sum_{schemes i} max(-|J_i(v)|, 0) / (2 * D!)`` (each ``|J|`` is ``D!`` times a
    simplex volume; the factor 2 averages the two splits, so the identity's positive volumes add up to
    exactly 1 per voxel), reported as ``100 * NDV / |mask|`` percent. At the border the displacement is
    replicated by one voxel (as in the authors' reference implementation), so one-sided differences that
    leave the grid see a locally constant displacement.

    Args:
        ddf: displacement in voxels, ``(D, *S)`` or ``(1, D, *S)``.
        mask: optional region (non-zero = inside, e.g. the brain mask of the fixed image) of shape ``S``;
            default all voxels.

    Returns:
        Percentage >= 0: an everywhere-reflecting map scores 100 inside the mask, and a map whose folded regions
        overlap several times can exceed 100 (a linear map with det -8 scores 800).

    References:
        Liu, Chen, Wei, Carass, Prince, "On finite difference Jacobian computation in deformable image
        registration", International Journal of Computer Vision 132, 2024 (arXiv:2212.06060).
    """
    u = ddf_array(ddf, "ndv")
    m = mask_array(mask, u.shape[1:], "ndv")
    vol = non_diffeomorphic_volume_map(u)
    return float(100.0 * vol[m].sum() / np.count_nonzero(m))
