"""common.io.convert: units, axes and orientation of displacement fields and affine maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from io_geometry import OASIS_LIA, oblique_lia, smooth_field

from common.io.convert import (
    affine_2d_from_3d,
    affine_to_itk_geometry,
    centred_affine_to_physical,
    itk_geometry_to_affine,
    lps_flip,
    mm_to_voxel,
    physical_affine_to_centred,
    physical_to_voxel,
    spacing_from_affine,
    voxel_to_mm,
    voxel_to_physical,
)

AFFINE_2D = np.array([[0.0, -0.7, 5.0], [1.3, 0.0, -2.0], [0.0, 0.0, 1.0]])  # rotated 90 deg, anisotropic


@pytest.mark.parametrize(
    "affine, expected",
    [(OASIS_LIA, (1.0, 1.0, 1.0)), (oblique_lia(), (1.2, 0.9, 1.5)), (AFFINE_2D, (1.3, 0.7))],
)
def test_spacing_from_affine(affine, expected):
    assert spacing_from_affine(affine) == pytest.approx(expected)


@pytest.mark.parametrize("shape, spacing", [((5, 6), (0.5, 2.0)), ((4, 5, 6), (1.2, 0.9, 1.5))])
def test_voxel_mm_round_trip_scales_each_component(shape, spacing):
    ddf = smooth_field(shape)
    mm = voxel_to_mm(ddf, spacing)
    for k, s in enumerate(spacing):
        assert torch.allclose(mm[:, k], ddf[:, k] * s)
    assert torch.allclose(mm_to_voxel(mm, spacing), ddf)


@pytest.mark.parametrize(
    "axis, ras",
    # the real data is LIA: +1 along array axis 0 goes Left (RAS x -1), 1 Inferior (z -1), 2 Anterior
    [(0, (-1.0, 0.0, 0.0)), (1, (0.0, 0.0, -1.0)), (2, (0.0, 1.0, 0.0))],
)
def test_unit_voxel_step_in_lia_data_points_the_documented_way(axis, ras):
    ddf = torch.zeros(1, 3, 3, 4, 5, dtype=torch.float64)
    ddf[:, axis] = 1.0
    d_ras = voxel_to_physical(ddf, OASIS_LIA)
    d_lps = voxel_to_physical(ddf, OASIS_LIA, lps=True)
    assert torch.allclose(d_ras[0, :, 1, 2, 3], torch.tensor(ras, dtype=torch.float64))
    lps = (-ras[0], -ras[1], ras[2])
    assert torch.allclose(d_lps[0, :, 1, 2, 3], torch.tensor(lps, dtype=torch.float64))


def test_voxel_to_physical_uses_the_affine_columns():
    aff = oblique_lia()
    ddf = smooth_field((4, 5, 6))
    d = voxel_to_physical(ddf, aff)
    expected = np.einsum("ij,j...->i...", aff[:3, :3], ddf[0].numpy())
    assert np.allclose(d[0].numpy(), expected)


def test_moving_affine_offset_is_a_constant_displacement():
    fixed = oblique_lia()
    moving = fixed.copy()
    moving[:3, 3] += [5.0, -1.0, 2.0]  # same axes, origin moved by (5, -1, 2) mm RAS
    d = voxel_to_physical(torch.zeros(1, 3, 3, 4, 5, dtype=torch.float64), fixed, moving)
    assert torch.allclose(d, torch.tensor([5.0, -1.0, 2.0], dtype=torch.float64).view(1, 3, 1, 1, 1).expand_as(d))


@pytest.mark.parametrize("lps", [False, True])
@pytest.mark.parametrize(
    "shape, fixed, moving",
    [
        ((4, 5, 6), oblique_lia(), None),
        (
            (4, 5, 6),
            oblique_lia(),
            oblique_lia(spacing=(1.0, 1.1, 0.8), degrees=-5.0, origin=(3.0, 2.0, 1.0)),
        ),
        ((6, 7), AFFINE_2D, None),
        ((6, 7), AFFINE_2D, AFFINE_2D @ np.diag([1.1, 0.9, 1.0])),
    ],
)
def test_physical_round_trip(shape, fixed, moving, lps):
    ddf = smooth_field(shape)
    back = physical_to_voxel(voxel_to_physical(ddf, fixed, moving, lps=lps), fixed, moving, lps=lps)
    assert torch.allclose(back, ddf, atol=1e-10)


def test_itk_geometry_round_trip_and_lps_signs():
    aff = oblique_lia()
    origin, spacing, direction = affine_to_itk_geometry(aff)
    assert spacing == pytest.approx((1.2, 0.9, 1.5))
    assert origin == pytest.approx((-30.0, 20.0, 15.0))  # RAS (30, -20, 15) in LPS
    assert np.allclose(direction @ direction.T, np.eye(3))
    assert np.allclose(itk_geometry_to_affine(origin, spacing, direction), aff)
    assert np.allclose(lps_flip(3), np.diag([-1.0, -1.0, 1.0]))


def test_affine_2d_from_3d_keeps_in_plane_rows_and_columns():
    a3 = np.array([[2.0, 0.1, 0.0, 7.0], [0.2, 3.0, 0.0, 8.0], [0.0, 0.0, 4.0, 9.0], [0, 0, 0, 1.0]])
    assert np.allclose(affine_2d_from_3d(a3), [[2.0, 0.1, 7.0], [0.2, 3.0, 8.0], [0, 0, 1.0]])


@pytest.mark.parametrize("moving", [None, oblique_lia(spacing=(1.0, 1.0, 2.0), degrees=20.0)])
def test_centred_affine_maps_fixed_points_to_moving_points(moving):
    shape = (8, 9, 7)
    fixed = oblique_lia()
    m_aff = fixed if moving is None else moving
    mat = torch.tensor([[[1.05, 0.1, -0.05, 0.7], [-0.08, 0.95, 0.06, -1.2], [0.03, -0.04, 1.1, 0.5]]])
    t_ras = centred_affine_to_physical(mat, shape, fixed, moving, lps=False)
    c = (np.array(shape) - 1) / 2
    a, t = mat[0, :, :3].double().numpy(), mat[0, :, 3].double().numpy()
    for x in ([0, 0, 0], [7, 8, 6], [2, 5, 3]):
        y = a @ (np.array(x) - c) + c + t  # moving voxel, by the project's definition
        p_fixed = fixed @ np.append(x, 1.0)
        assert np.allclose(t_ras @ p_fixed, m_aff @ np.append(y, 1.0))
    t_lps = centred_affine_to_physical(mat, shape, fixed, moving, lps=True)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert np.allclose(t_lps, flip @ t_ras @ flip)
    back = physical_affine_to_centred(t_lps, shape, fixed, moving, lps=True)
    assert torch.allclose(back.float(), mat, atol=1e-6)


def test_identity_matrix_is_identity_transform():
    t = centred_affine_to_physical(torch.eye(3, 4)[None], (5, 6, 7), oblique_lia())
    assert np.allclose(t, np.eye(4))


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: voxel_to_physical(torch.zeros(1, 2, 4, 4), OASIS_LIA),
            "fixed_affine.*3x3.*affine_2d_from_3d",
        ),
        (lambda: voxel_to_physical(torch.zeros(1, 2, 4, 4, 4), OASIS_LIA), "ddf.*2 channels"),
        (lambda: voxel_to_physical(torch.full((1, 3, 2, 2, 2), float("nan")), OASIS_LIA), "ddf.*NaN"),
        (lambda: voxel_to_physical(torch.zeros(1, 3, 2, 2, 2), np.zeros((4, 4))), "fixed_affine"),
        (lambda: voxel_to_mm(torch.zeros(1, 3, 2, 2, 2), (1.0, 1.0)), "spacing"),
        (lambda: voxel_to_mm(torch.zeros(1, 3, 2, 2, 2), (1.0, 0.0, 1.0)), "spacing"),
        (
            lambda: affine_to_itk_geometry(np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])),
            "shear",
        ),
        (lambda: centred_affine_to_physical(torch.zeros(1, 3, 3), (4, 4, 4), OASIS_LIA), "matrix"),
        (lambda: centred_affine_to_physical(torch.eye(3, 4)[None], (4, 4), OASIS_LIA), "shape"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
