"""HD95 / ASSD on shifted squares and cubes with anisotropic spacing (values derived by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from common.metrics import assd, hd95, mean_hd95, surface_distances


def box(ndim: int, shift_axis: int = 0, shift: int = 0, size: int = 10) -> np.ndarray:
    """A side-4 square/cube at voxels 2..5 (label 1), optionally shifted along one axis."""
    out = np.zeros((size,) * ndim, dtype=np.int64)
    sl = [slice(2, 6)] * ndim
    sl[shift_axis] = slice(2 + shift, 6 + shift)
    out[tuple(sl)] = 1
    return out


# Hand derivation for a one-voxel shift along axis k (spacing s): the 4x4 "low" face of A is s_k from
# B's surface, the interior of A's "high" face lies inside B's surface layer ring, at min(s_k, other s)
# from it, every other surface voxel of A is on B's surface (distance 0). 2D: 12 surface pixels
# (4 at s_k, 2 at min, 6 at 0); 3D: 56 surface voxels (16 at s_k, 4 at min, 36 at 0).
@pytest.mark.parametrize(
    "ndim, axis, spacing, hd, assd_mm",
    [
        (2, 0, (2.0, 1.0), 2.0, (4 * 2.0 + 2 * 1.0) / 12),
        (2, 1, (1.0, 3.0), 3.0, (4 * 3.0 + 2 * 1.0) / 12),
        (3, 0, (2.0, 1.0, 1.0), 2.0, (16 * 2.0 + 4 * 1.0) / 56),
        (3, 1, (2.0, 0.5, 1.0), 0.5, (16 * 0.5 + 4 * 0.5) / 56),
    ],
)
def test_shifted_boxes_anisotropic(ndim, axis, spacing, hd, assd_mm):
    a, b = box(ndim), box(ndim, axis, 1)
    assert hd95(a, b, [1], spacing) == pytest.approx({1: hd})
    assert assd(a, b, [1], spacing) == pytest.approx({1: assd_mm})
    assert hd95(b, a, [1], spacing) == pytest.approx({1: hd})  # symmetric
    assert assd(torch.from_numpy(b), torch.from_numpy(a), [1], spacing) == pytest.approx({1: assd_mm})


def test_percentile_100_is_hausdorff_and_identity_is_zero():
    a, b = box(3), box(3, 2, 2)
    assert hd95(a, b, [1], (1.0, 1.0, 3.0), percentile=100) == pytest.approx({1: 6.0})
    assert hd95(a, a, [1], (1.0, 1.0, 3.0)) == {1: 0.0}
    d_ab, d_ba = surface_distances(a, b, (1.0, 1.0, 3.0))
    assert d_ab.size == d_ba.size == 56 and d_ab.max() == pytest.approx(6.0)


def test_crop_does_not_change_distances_at_the_image_edge():
    a = np.zeros((6, 7, 5), dtype=np.int64)
    a[:3, :4, 1:] = 1  # touches the image edge
    b = np.roll(a, 2, axis=0)
    sp = (1.2, 0.7, 2.0)
    d_ab, d_ba = surface_distances(a, b, sp)
    # reference: full-image border voxels and brute-force nearest distances
    st = ndimage.generate_binary_structure(3, 1)
    sa = np.argwhere(a.astype(bool) & ~ndimage.binary_erosion(a.astype(bool), st)) * sp
    sb = np.argwhere(b.astype(bool) & ~ndimage.binary_erosion(b.astype(bool), st)) * sp
    brute = np.sqrt(((sa[:, None] - sb[None]) ** 2).sum(-1))
    np.testing.assert_allclose(np.sort(d_ab), np.sort(brute.min(1)))
    np.testing.assert_allclose(np.sort(d_ba), np.sort(brute.min(0)))


def test_matches_monai_on_random_masks():
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(3)
    sp = (1.5, 0.8, 2.0)
    p = ndimage.gaussian_filter(rng.normal(size=(14, 12, 10)), 1.5) > 0.05
    q = ndimage.gaussian_filter(rng.normal(size=(14, 12, 10)), 1.5) > 0.05
    pt, qt = torch.from_numpy(p)[None, None], torch.from_numpy(q)[None, None]
    ref_hd = compute_hausdorff_distance(pt, qt, percentile=95, spacing=sp).item()
    ref_assd = compute_average_surface_distance(pt, qt, symmetric=True, spacing=sp).item()
    assert hd95(p.astype(int), q.astype(int), [1], sp)[1] == pytest.approx(ref_hd, rel=1e-5)
    assert assd(p.astype(int), q.astype(int), [1], sp)[1] == pytest.approx(ref_assd, rel=1e-5)


def test_empty_labels_skipped_or_nan():
    a = box(2) * 1
    b = box(2, 0, 1) * 1
    b[0, 0] = 2  # label 2 only in b
    out, skipped = hd95(a, b, None, 1.0, return_skipped=True)
    assert set(out) == {1} and skipped == [2]
    # label 3: in the fixed image and in the unwarped moving image, lost by the warp -> nan, not skipped
    ref = a.copy()
    ref[9, 9] = 3
    moving = ref.copy()
    res = hd95(a, ref, None, 1.0, moving=moving)
    assert set(res) == {1, 3} and math.isnan(res[3]) and res[1] == 0.0
    assert mean_hd95(a, ref, None, 1.0, moving=moving) == 0.0
    assert math.isnan(mean_hd95(a, ref, [5], 1.0))
    assert surface_distances(np.zeros((3, 3)), a[:3, :3])[0].size == 0


def test_leading_singleton_axes_accepted():
    a, b = box(3), box(3, 0, 1)
    assert hd95(a[None, None], b[None, None], [1], (2.0, 1.0, 1.0)) == pytest.approx({1: 2.0})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spacing": (1.0, 1.0)}, r"hd95: `spacing` must be 3 positive numbers"),
        ({"spacing": (1.0, -1.0, 1.0)}, r"hd95: `spacing` must be 3 positive numbers"),
        (
            {"ref": np.zeros((10, 10, 9))},
            r"hd95: shapes differ: `pred` \(10, 10, 10\) vs `ref` \(10, 10, 9\)",
        ),
        ({"ref": np.full((10, 10, 10), np.nan)}, r"hd95: `ref` contains NaN"),
        ({"percentile": 101}, r"hd95: `percentile` must be in \[0, 100\]"),
    ],
)
def test_hd95_bad_inputs(kwargs, match):
    args = {"pred": box(3), "ref": box(3), "labels": [1], "spacing": 1.0} | kwargs
    with pytest.raises(ValueError, match=match):
        hd95(**args)
