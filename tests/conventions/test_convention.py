"""The displacement convention of common/conventions.py, pinned by behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.blocks import integrate_velocity, resize_flow, warp
from common.conventions import (
    identity_grid,
    normalised_to_voxel,
    resize_scale_factors,
    voxel_to_normalised,
)


@pytest.mark.parametrize("shape", [(9, 10), (7, 8, 9)])
def test_plus_one_voxel_along_axis_k_pulls_content_back(shape):
    dims = len(shape)
    centre = tuple(n // 2 for n in shape)
    for k in range(dims):
        image = torch.zeros(1, 1, *shape)
        image[(0, 0, *centre)] = 1.0
        ddf = torch.zeros(1, dims, *shape)
        ddf[:, k] = 1.0
        out = warp(image, ddf)
        # warped(x) = moving(x + e_k): the bright voxel appears one voxel EARLIER along axis k
        expected = list(centre)
        expected[k] -= 1
        assert out[(0, 0, *expected)].item() == pytest.approx(1.0)
        assert out.sum().item() == pytest.approx(1.0)


def test_fractional_displacement_interpolates_linearly():
    image = torch.arange(10.0).view(1, 1, 10, 1).repeat(1, 1, 1, 4)
    ddf = torch.zeros(1, 2, 10, 4)
    ddf[:, 0] = 0.25
    out = warp(image, ddf)
    assert torch.allclose(out[0, 0, :9, 0], torch.arange(9.0) + 0.25, atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 9), (6, 7, 8)])
def test_constant_svf_integrates_to_itself(shape):
    dims = len(shape)
    svf = torch.zeros(1, dims, *shape)
    for k in range(dims):
        svf[:, k] = 0.3 * (k + 1)
    ddf = integrate_velocity(svf, num_steps=7)
    assert torch.allclose(ddf, svf, atol=1e-5)


def test_resize_preserves_physical_displacement():
    # a linear field is reproduced exactly by linear interpolation, so the check is exact
    n, m = (9, 13, 17), (5, 7, 9)
    grid = identity_grid(n)
    ddf = torch.cat([0.1 * grid[:, :1] + 0.5, -0.2 * grid[:, 1:2], 0.05 * grid[:, 2:3] - 1.0], dim=1)
    spacing_n = torch.tensor([1.0, 1.5, 2.0])
    spacing_m = spacing_n * torch.tensor([(a - 1) / (b - 1) for a, b in zip(n, m)])
    small = resize_flow(ddf, m)
    # physical position of small-grid voxel j equals physical position of big-grid voxel j * (n-1)/(m-1)
    j = torch.tensor([2, 3, 4])
    i = j * torch.tensor([(a - 1) / (b - 1) for a, b in zip(n, m)])
    big_at_i = torch.tensor([0.1 * i[0] + 0.5, -0.2 * i[1], 0.05 * i[2] - 1.0])
    phys_big = big_at_i * spacing_n
    phys_small = small[0, :, j[0], j[1], j[2]] * spacing_m
    assert torch.allclose(phys_small, phys_big, atol=1e-5)
    # and back again
    assert torch.allclose(resize_flow(small, n), ddf, atol=1e-4)


def test_half_resolution_flow_matches_full_resolution_warp():
    """A flow predicted at half size and upsampled warps like the equivalent full-size flow."""
    full = (33, 41, 29)
    half = tuple((s + 1) // 2 for s in full)
    # smooth image so interpolation error stays small
    g = identity_grid(full)
    image = torch.sin(g[:, :1] / 4) * torch.cos(g[:, 1:2] / 5) + torch.sin(g[:, 2:3] / 3)
    flow_half = torch.zeros(1, 3, *half)
    flow_half[:, 0] = 1.0  # one HALF-resolution voxel
    flow_full = resize_flow(flow_half, full)
    expected = resize_scale_factors(half, full)[0]
    assert flow_full[0, 0].mean().item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(2.0, rel=0.05)
    warped_full = warp(image, flow_full)
    image_half = F.interpolate(image, size=half, mode="trilinear", align_corners=True)
    warped_half = warp(image_half, flow_half)
    back = F.interpolate(warped_full, size=half, mode="trilinear", align_corners=True)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    assert (back[inner] - warped_half[inner]).abs().max().item() < 0.05


def test_monai_voxelmorph_half_res_scales_the_other_way():
    """MONAI VoxelMorph(half_res=True) multiplies a field by 2 when DOWNsampling it (pinned so we notice a fix).

    Our resize_flow multiplies by ~0.5 when downsampling, which preserves the physical displacement.
    """
    x = torch.ones(1, 3, 16, 16, 16)
    monai_down = F.interpolate(x, scale_factor=0.5, mode="trilinear", align_corners=True) * 2.0  # voxelmorph.py
    ours = resize_flow(x, (8, 8, 8))
    assert monai_down.mean().item() == pytest.approx(2.0)
    assert ours.mean().item() == pytest.approx(7 / 15, rel=1e-5)


def test_normalised_round_trip():
    ddf = torch.randn(2, 3, 5, 6, 7)
    norm = voxel_to_normalised(ddf)
    assert torch.allclose(norm[:, 0], ddf[:, 0] * 2 / 4)
    assert torch.allclose(normalised_to_voxel(norm), ddf, atol=1e-6)


def test_warp_matches_grid_sample_with_normalised_grid():
    """The one private flip: array-order normalised field + identity equals grid_sample's xyz grid."""
    from common.conventions import _to_grid_sample_order

    shape = (5, 6, 7)
    image = torch.randn(1, 1, *shape)
    ddf = torch.randn(1, 3, *shape) * 0.7
    grid = voxel_to_normalised(identity_grid(shape) + ddf) - 1.0
    ref = F.grid_sample(image, _to_grid_sample_order(grid), align_corners=True, padding_mode="border")
    assert torch.allclose(warp(image, ddf), ref, atol=1e-5)
