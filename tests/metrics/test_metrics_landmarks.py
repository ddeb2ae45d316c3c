"""Target registration error under the pull-back convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.metrics import tre

FIXED = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 5.5], [2.5, 3.5, 1.0]])
SHIFT = np.array([1.0, -2.0, 0.5])
SPACING = (1.0, 2.0, 0.5)


def test_zero_field_gives_unregistered_tre():
    moving = FIXED + np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [3.0, 4.0, 0.0]])
    out = tre(FIXED, moving, np.zeros((3, 6, 5, 7)), SPACING)
    np.testing.assert_allclose(out, [np.sqrt(1 + 1), 2.0, np.sqrt(9 + 64)])


def test_exact_constant_correction_gives_zero_and_wrong_sign_doubles():
    moving = FIXED + SHIFT
    u = np.broadcast_to(SHIFT[:, None, None, None], (3, 6, 5, 7)).copy()
    np.testing.assert_allclose(tre(FIXED, moving, u, SPACING), 0.0, atol=1e-12)
    unregistered = tre(FIXED, moving, np.zeros_like(u), SPACING)
    np.testing.assert_allclose(unregistered, np.linalg.norm(SHIFT * SPACING))
    np.testing.assert_allclose(tre(FIXED, moving, -u, SPACING), 2 * unregistered)


def test_linear_interpolation_between_voxels_2d_torch():
    # u_0 = 0.5 x_0: exact under linear interpolation at non-integer points
    x = np.array([[2.5, 1.0], [0.25, 3.75]])
    u = np.zeros((2, 5, 5))
    u[0] = 0.5 * np.arange(5.0)[:, None]
    moving = x + np.stack([0.5 * x[:, 0], np.zeros(2)], axis=1)
    out = tre(torch.from_numpy(x), torch.from_numpy(moving), torch.from_numpy(u)[None], 0.7)
    np.testing.assert_allclose(out, 0.0, atol=1e-12)


@pytest.mark.parametrize(
    "fixed, moving, ddf, match",
    [
        (
            FIXED[:, :2],
            FIXED[:, :2],
            np.zeros((3, 6, 5, 7)),
            r"tre: `fixed_points_vox` must have shape \(N, 3\)",
        ),
        (
            FIXED,
            FIXED[:2],
            np.zeros((3, 6, 5, 7)),
            r"tre: `fixed_points_vox` \(3, 3\) and `moving_points_vox` \(2, 3\)",
        ),
        (FIXED, np.full((3, 3), np.nan), np.zeros((3, 6, 5, 7)), r"tre: `moving_points_vox` contains NaN"),
        (FIXED + 10, FIXED, np.zeros((3, 6, 5, 7)), r"tre: `fixed_points_vox` has 3 point\(s\) outside"),
        (FIXED, FIXED, np.zeros((2, 6, 5, 7)), r"tre: `ddf` has 2 channels but 3 spatial dims"),
    ],
)
def test_tre_bad_inputs(fixed, moving, ddf, match):
    with pytest.raises(ValueError, match=match):
        tre(fixed, moving, ddf, SPACING)
