"""Jacobian determinant, SDlogJ, % folding and non-diffeomorphic volume on hand-built fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from common.metrics import jacobian_determinant, ndv, non_diffeomorphic_volume_map, percent_folding, sdlogj


def grid(shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))


def affine_field(matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """u(x) = A x  (so det J = det(I + A) everywhere)."""
    return np.einsum("ij,j...->i...", matrix, grid(shape))


def spike_field(ndim: int, n: int = 8, plane: int = 4, height: float = 3.0) -> np.ndarray:
    """u_0 = height on the plane x_0 = plane, 0 elsewhere: voxel `plane` jumps past its two neighbours.

    phi_0 along axis 0 is ..., 3, 7, 5, 6, ...: central differences give det = 1 - height / 2 = -0.5 on
    the plane x_0 = plane + 1 only (1/n of the voxels); the forward difference at `plane` and the
    backward difference at `plane + 1` are -2, so in every scheme that uses them the simplices flip.
    """
    u = np.zeros((ndim,) + (n,) * ndim)
    u[0, plane] = height
    return u


def smooth_field(ndim: int, n: int = 10, amp: float = 0.3) -> np.ndarray:
    x = grid((n,) * ndim)
    return np.stack([amp * np.sin(2 * np.pi * x[(k + 1) % ndim] / n) for k in range(ndim)])


@pytest.mark.parametrize(
    "matrix",
    [
        np.zeros((3, 3)),
        np.diag([0.5, -0.2, 0.1]),
        np.array([[0.0, 0.3, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 0.2]]),
    ],
)
def test_jacobian_determinant_of_affine_fields(matrix):
    det = jacobian_determinant(affine_field(matrix, (5, 6, 7)))
    assert det.shape == (5, 6, 7)
    np.testing.assert_allclose(det, np.linalg.det(np.eye(3) + matrix), atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 6, 7), (6, 5)])
def test_jacobian_determinant_matches_blocks(shape):
    from common.blocks import jacobian_determinant as blocks_jacdet

    u = np.random.default_rng(2).normal(size=(len(shape), *shape))
    expected = blocks_jacdet(torch.from_numpy(u)[None])[0].numpy()
    np.testing.assert_allclose(jacobian_determinant(u), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(41, 6, 7), (33, 9), (17, 3, 4)])
def test_jacobian_determinant_in_slabs_equals_whole_volume(shape):
    """Fields longer than one slab (16 slices) along axis 0: the slab edges must not show."""
    from common.blocks import jacobian_determinant as blocks_jacdet
    from common.metrics.jacobian import _central_det

    u = np.random.default_rng(3).normal(size=(len(shape), *shape))
    whole = _central_det(u, "test", slab=10**6)
    for slab in (1, 2, 5, 16):
        np.testing.assert_array_equal(_central_det(u, "test", slab=slab), whole)
    expected = blocks_jacdet(torch.from_numpy(u)[None])[0].numpy()
    np.testing.assert_allclose(jacobian_determinant(u), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "field",
    [
        np.zeros((3, 7, 8, 9)),
        np.full((3, 7, 8, 9), 2.5),
        affine_field(np.diag([0.5, -0.3, 0.2]), (7, 8, 9)),
        np.zeros((2, 9, 9)),
        affine_field(np.array([[0.2, 0.1], [0.0, -0.4]]), (9, 9)),
    ],
)
def test_sdlogj_zero_for_constant_and_affine(field):
    assert sdlogj(field) == pytest.approx(0.0, abs=1e-12)


def test_sdlogj_quadratic_field_known_value():
    # u_0 = c x_0^2 / 2: central differences are exact, det J = 1 + c x_0
    c, n = 0.1, 12
    u = np.zeros((3, n, 6, 6))
    u[0] = 0.5 * c * grid((n, 6, 6))[0] ** 2
    x0 = np.arange(2, n - 2, dtype=np.float64)
    assert sdlogj(u, crop=2) == pytest.approx(np.log(1 + c * x0 + 3).std(), rel=1e-12)


def test_sdlogj_positive_for_random_field_and_torch_input():
    u = np.random.default_rng(0).normal(scale=0.5, size=(3, 8, 8, 8))
    value = sdlogj(u)
    assert value > 0.01
    assert sdlogj(torch.from_numpy(u)[None]) == pytest.approx(value)


@pytest.mark.parametrize("ndim", [2, 3])
def test_spike_folds_known_fraction(ndim):
    u = spike_field(ndim)
    assert percent_folding(u) == pytest.approx(100.0 / 8)
    # two planes (x_0 = 4 and 5) are entirely non-diffeomorphic: NDV = 2 planes of 8
    assert ndv(u) == pytest.approx(100.0 * 2 / 8)
    vol = non_diffeomorphic_volume_map(u)
    np.testing.assert_allclose(vol[4], 1.0)
    np.testing.assert_allclose(vol[5], 1.0)
    assert vol.sum() == pytest.approx(2 * 8 ** (ndim - 1))


def test_ndv_sees_folding_central_differences_miss():
    # the spike voxel itself has central-difference det 1 (its own displacement never enters it)
    u = spike_field(3)
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[4] = True
    assert jacobian_determinant(u)[4] == pytest.approx(np.ones((8, 8)))
    assert percent_folding(u, mask) == 0.0
    assert ndv(u, mask) == pytest.approx(100.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_smooth_and_zero_fields_have_no_folding(ndim):
    for u in (np.zeros((ndim,) + (6,) * ndim), smooth_field(ndim)):
        assert percent_folding(u) == 0.0
        assert ndv(u) == 0.0
        assert sdlogj(u) < 0.2


@pytest.mark.parametrize("ndim", [2, 3])
def test_reflection_has_full_ndv_inside(ndim):
    # u_0 = -2 x_0 reflects axis 0 (det = -1). The displacement is edge-replicated at the border (as in
    # the reference implementation), so the first and last slab count half: NDV = (n - 1) / n overall.
    n = 6
    matrix = np.zeros((ndim, ndim))
    matrix[0, 0] = -2.0
    u = affine_field(matrix, (n,) * ndim)
    interior = np.zeros((n,) * ndim, dtype=bool)
    interior[(slice(1, -1),) * ndim] = True
    assert ndv(u, interior) == pytest.approx(100.0)
    assert ndv(u) == pytest.approx(100.0 * (n - 1) / n)
    assert percent_folding(u) == 100.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_border_plane_pushed_outwards_is_not_folding(ndim):
    # phi_0 along axis 0 = -2, 1, 2, 3, ...: injective. With the displacement edge-replicated beyond the
    # border (reference implementation) nothing flips; zero or mirror padding would report folding.
    u = np.zeros((ndim,) + (6,) * ndim)
    u[0, 0] = -2.0
    assert ndv(u) == 0.0
    assert percent_folding(u) == 0.0


def test_ndv_positive_definite_shear_is_zero_and_chunking_is_invisible():
    u = affine_field(np.array([[0.0, 0.9, 0.0], [0.0, 0.0, 0.9], [0.0, 0.0, 0.0]]), (6, 5, 4))
    assert ndv(u) == pytest.approx(0.0)
    rng = np.random.default_rng(1)
    r = np.stack([ndimage.gaussian_filter(rng.normal(size=(9, 7, 6)), 1.0) * 5 for _ in range(3)])
    np.testing.assert_allclose(non_diffeomorphic_volume_map(r, chunk=1), non_diffeomorphic_volume_map(r, chunk=64))
    assert ndv(r) > 0.0


@pytest.mark.parametrize(
    "fn, args, exc, match",
    [
        (ndv, (np.zeros((2, 4, 4, 4)),), ValueError, r"ndv: `ddf` has 2 channels but 3 spatial dims"),
        (sdlogj, (np.zeros((3, 4, 4)),), ValueError, r"sdlogj: `ddf` has 3 channels but 2 spatial dims"),
        (percent_folding, (np.full((2, 4, 4), np.nan),), ValueError, "percent_folding: `ddf` contains NaN"),
        (ndv, (np.zeros((2, 3, 4, 4, 4)),), ValueError, r"ndv: `ddf` must hold a single field"),
        (sdlogj, (np.zeros((2, 4, 8)),), ValueError, r"sdlogj: `crop`=2 leaves no voxel"),
        (
            percent_folding,
            (np.zeros((2, 1, 8)),),
            ValueError,
            r"percent_folding: `ddf` needs at least 2 voxels",
        ),
        (sdlogj, (np.zeros((2, 8, 8)), -1), ValueError, r"sdlogj: `crop` must be a non-negative integer"),
        (ndv, (np.zeros((2, 4, 4)), np.ones((4, 5))), ValueError, r"ndv: `mask` has shape \(4, 5\)"),
        (ndv, (np.zeros((2, 4, 4)), np.zeros((4, 4))), ValueError, r"ndv: `mask` is empty"),
        (jacobian_determinant, ([[0.0]],), TypeError, r"jacobian_determinant: `ddf` must be a numpy.ndarray"),
    ],
)
def test_bad_fields(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


def test_a_float32_field_gives_the_values_of_its_float64_copy():
    """The metrics convert a float32 field slab by slab (no whole float64 copy at 1 mm): same numbers exactly."""
    import torch

    from common.metrics import percent_folding, sdlogj
    from common.metrics.jacobian import jacobian_determinant

    torch.manual_seed(0)
    u = torch.nn.functional.interpolate(torch.randn(1, 3, 5, 6, 7) * 4, size=(40, 35, 45), mode="trilinear")[0].numpy()
    det = jacobian_determinant(u)
    assert det.dtype == np.float64 and np.array_equal(det, jacobian_determinant(u.astype(np.float64)))
    assert 0 < percent_folding(u) == percent_folding(u.astype(np.float64))
    expected = float(np.log(np.clip(det[2:-2, 2:-2, 2:-2] + 3.0, 1e-9, 1e9)).std())  # the Learn2Reg formula
    assert sdlogj(u) == sdlogj(u.astype(np.float64), det=det) == expected
