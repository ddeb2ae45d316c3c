"""World-coordinate geometry between user images and the network grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from common.blocks import one_hot, sample_at, sample_labels_at
from common.conventions import identity_grid
from common.geometry import (
    ddf_to_fixed_grid,
    network_grid,
    resample_to_grid,
    warp_labels_to_fixed,
    warp_to_fixed,
)


def lia_affine(spacing=(1.0, 1.0, 1.0), origin=(10.0, -20.0, 5.0)):
    # array axis 0 -> Left (-x in RAS), axis 1 -> Inferior (-z), axis 2 -> Anterior (+y)
    a = np.zeros((4, 4))
    a[0, 0] = -spacing[0]
    a[2, 1] = -spacing[1]
    a[1, 2] = spacing[2]
    a[:3, 3] = origin
    a[3, 3] = 1
    return a


def blob(shape, affine, centre_world):
    g = identity_grid(shape, dtype=torch.float64)[0].reshape(3, -1).numpy()
    world = affine[:3, :3] @ g + affine[:3, 3:4]
    d2 = ((world - np.asarray(centre_world)[:, None]) ** 2).sum(0)
    return torch.as_tensor(np.exp(-d2 / (2 * 6.0**2)).reshape(shape), dtype=torch.float32)[None, None]


def test_network_grid_same_orientation_and_spacing_is_the_fixed_grid():
    aff = lia_affine()
    net_aff, net_shape = network_grid(aff, (32, 48, 40), (1, 1, 1), axcodes="LIA", multiple=16)
    assert net_shape == (32, 48, 48)
    assert np.allclose(net_aff[:3, :3], aff[:3, :3])
    assert np.allclose(net_aff[:3, 3], aff[:3, 3] - aff[:3, 2] * 4)  # 4 voxels padded before axis 2


def test_network_grid_reorients_and_resamples():
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    net_aff, net_shape = network_grid(ras, (40, 50, 30), (2, 2, 2), axcodes="LIA", multiple=1)
    assert "".join(nib.aff2axcodes(net_aff)) == "LIA"
    # RAS (40, 50, 30) -> LIA axes are (x, z, y) sizes (40, 30, 50) at 1 mm -> 2 mm: (n - 1) / 2 + 1
    assert net_shape == (21, 16, 26)
    assert np.allclose(np.sqrt((net_aff[:3, :3] ** 2).sum(0)), [39 / 20, 29 / 15, 49 / 25])


def test_resample_between_orientations_preserves_world_content():
    shape = (30, 34, 32)
    fixed_aff = lia_affine(origin=(15.0, -16.0, 17.0))
    centre = (2.0, 3.0, -1.0)
    fixed = blob(shape, fixed_aff, centre)
    # same content sampled on a RAS grid with 1.5 mm voxels covering the same region
    ras_aff = np.diag([1.5, 1.5, 1.5, 1.0])
    ras_aff[:3, 3] = (-16.0, -13.0, -17.0)
    moving = blob((24, 22, 24), ras_aff, centre)
    back = resample_to_grid(moving, ras_aff, fixed_aff, shape)
    inner = (0, 0, slice(6, -6), slice(6, -6), slice(6, -6))
    assert (back[inner] - fixed[inner]).abs().max() < 0.03


def test_constant_world_translation_maps_back_to_fixed_voxels():
    fixed_aff = lia_affine(spacing=(1.0, 1.2, 0.9))
    fixed_shape = (20, 22, 24)
    net_aff, net_shape = network_grid(fixed_aff, fixed_shape, (2, 2, 2), axcodes="RAS", multiple=8)
    t_world = np.array([3.0, -2.0, 1.0])
    net_ddf = np.linalg.solve(net_aff[:3, :3], t_world)
    ddf_net = torch.tensor(net_ddf, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, *net_shape).contiguous()
    ddf_f = ddf_to_fixed_grid(ddf_net, net_aff, fixed_aff, fixed_shape)
    expected = np.linalg.solve(fixed_aff[:3, :3], t_world)
    assert ddf_f.shape == (1, 3, *fixed_shape)
    assert np.allclose(ddf_f[0, :, 5, 6, 7].numpy(), expected, atol=1e-4)
    assert np.allclose(ddf_f.flatten(2).std(-1).numpy(), 0, atol=1e-4)


def test_warp_to_fixed_recovers_a_world_shift_across_grids():
    fixed_aff = lia_affine()
    shape = (32, 32, 32)
    c_fixed = (0.0, 0.0, 0.0)
    t = np.array([4.0, -3.0, 2.0])  # the moving content sits at c + t
    fixed = blob(shape, fixed_aff, c_fixed)
    mov_aff = np.diag([1.25, 1.25, 1.25, 1.0])
    mov_aff[:3, 3] = (-20.0, -20.0, -20.0)
    moving = blob((32, 32, 32), mov_aff, tuple(np.add(c_fixed, t)))
    # pull-back: fixed point p samples the moving image at p + t
    ddf = torch.tensor(np.linalg.solve(fixed_aff[:3, :3], t), dtype=torch.float32).view(1, 3, 1, 1, 1)
    ddf = ddf.expand(1, 3, *shape).contiguous()
    warped = warp_to_fixed(moving, mov_aff, ddf, fixed_aff)
    unwarped = warp_to_fixed(moving, mov_aff, torch.zeros_like(ddf), fixed_aff)
    inner = (0, 0, slice(6, -6), slice(6, -6), slice(6, -6))
    err_after = (warped[inner] - fixed[inner]).abs().max().item()
    err_before = (unwarped[inner] - fixed[inner]).abs().max().item()
    assert err_after < 0.03 < err_before


def test_network_grid_rejects_bad_arguments():
    with pytest.raises(ValueError, match="spacing"):
        network_grid(np.eye(4), (8, 8, 8), (1, 1))
    with pytest.raises(ValueError, match="does not fit"):
        network_grid(np.eye(3), (8, 8, 8), (1, 1, 1))


def test_world_map_ddf_composes_a_pre_displacement_and_changes_grid():
    from common.geometry import world_map_ddf

    fixed = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed[:3, 3] = [-10.0, 4.0, 0.0]
    target = np.diag([1.0, 1.0, 1.0, 1.0])
    world = np.eye(4)
    world[:3, 3] = [3.0, 0.0, -2.0]  # fixed world point -> target world point + (3, 0, -2) mm
    shape = (4, 5, 3)
    # identity world map on the same grid: zero field; pure pre-displacement passes through unchanged
    assert np.abs(world_map_ddf(np.eye(4), fixed, shape)).max() < 1e-6
    u = np.random.default_rng(0).normal(0, 1, (3, *shape))
    assert np.allclose(world_map_ddf(np.eye(4), fixed, shape, pre_ddf=u), u, atol=1e-5)
    # voxel x of the fixed grid lands at target voxel T^-1 (W (F (x + u)))
    d = world_map_ddf(world, fixed, shape, target_affine=target, pre_ddf=u)
    x = np.array([1, 2, 0])
    p = fixed @ np.append(x + u[:, 1, 2, 0], 1.0)
    expected = (np.linalg.inv(target) @ world @ p)[:3] - x
    assert np.allclose(d[:, 1, 2, 0], expected, atol=1e-4)


def _argmax_reference(labels_idx, coords, k):
    """The full one-hot float64 path that sample_labels_at replaces."""
    oh = one_hot(torch.as_tensor(labels_idx)[None, None], k, dtype=torch.float64)
    return sample_at(oh, coords.to(torch.float64), mode="bilinear", padding_mode="zeros").argmax(1)[0]


@pytest.mark.parametrize("block", [1, 7, 300, 1 << 20])
def test_sample_labels_at_matches_the_full_one_hot_argmax(block):
    gen = torch.Generator().manual_seed(0)
    k = 7
    # blocky labels (real maps are piecewise constant), sampled at jittered, partly out-of-grid points
    coarse = torch.randint(0, k, (1, 1, 5, 6, 4), generator=gen).float()
    labels = torch.nn.functional.interpolate(coarse, size=(15, 18, 12), mode="nearest").long()
    coords = identity_grid((12, 14, 10), dtype=torch.float64) * 1.3 - 1.0
    coords = coords + 0.7 * torch.rand(coords.shape, generator=gen, dtype=torch.float64)
    got = sample_labels_at(labels, coords, num_classes=k, block=block)[0, 0]
    ref = _argmax_reference(labels[0, 0].numpy(), coords, k)
    assert got.shape == (12, 14, 10)
    assert (got == ref).float().mean().item() > 0.999  # float32 vs float64 weights may break an exact tie
    assert set(got.unique().tolist()) <= set(range(k))
    # out of the moving grid every channel interpolates to 0 -> the lowest class, as argmax gives
    far = torch.full((1, 3, 2, 2, 2), 100.0, dtype=torch.float64)
    assert sample_labels_at(labels, far, num_classes=k, block=block).unique().tolist() == [0]


def test_sample_labels_at_rejects_bad_input():
    labels = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="sample_labels_at"):
        sample_labels_at(labels, torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="block"):
        sample_labels_at(labels, torch.zeros(1, 3, 4, 4, 4), block=0)
    with pytest.raises(ValueError, match="0..2"):
        sample_labels_at(labels + 5, torch.zeros(1, 3, 4, 4, 4), num_classes=3)


def test_warp_labels_to_fixed_keeps_codes_and_follows_a_world_shift():
    fixed_aff = lia_affine()
    shape = (24, 24, 24)
    mov_aff = np.diag([1.5, 1.5, 1.5, 1.0])
    mov_aff[:3, 3] = (-18.0, -18.0, -18.0)
    t = np.array([4.0, -3.0, 2.0])  # the moving structure sits at its fixed position + t (mm)
    fixed_blob = blob(shape, fixed_aff, (0.0, 0.0, 0.0))[0, 0].numpy()
    moving_blob = blob((24, 24, 24), mov_aff, tuple(t))[0, 0].numpy()
    codes = lambda b: np.where(b > 0.6, 41, np.where(b > 0.2, 2, 0))  # noqa: E731 (FreeSurfer-like codes)
    fixed_lab, moving_lab = codes(fixed_blob), codes(moving_blob)
    ddf = torch.tensor(np.linalg.solve(fixed_aff[:3, :3], t), dtype=torch.float32).view(1, 3, 1, 1, 1)
    ddf = ddf.expand(1, 3, *shape).contiguous()
    after = warp_labels_to_fixed(moving_lab, mov_aff, ddf, fixed_aff, block=1000)
    before = warp_labels_to_fixed(moving_lab, mov_aff, None, fixed_aff, fixed_shape=shape)
    assert after.shape == before.shape == shape
    assert set(np.unique(after)) == {0, 2, 41}

    def dice(a, b, c):
        return 2 * np.sum((a == c) & (b == c)) / (np.sum(a == c) + np.sum(b == c))

    assert dice(after, fixed_lab, 41) > 0.9 > dice(before, fixed_lab, 41)
    with pytest.raises(ValueError, match="fixed_shape"):
        warp_labels_to_fixed(moving_lab, mov_aff, None, fixed_aff)


def test_fix_malloc_mmap_threshold_respects_the_user_setting(monkeypatch):
    import sys

    from common.engines.inference import fix_malloc_mmap_threshold

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_malloc_mmap_threshold() is False  # the user's own glibc setting wins
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    if sys.platform == "linux":
        import ctypes

        if not hasattr(ctypes.CDLL(None), "mallopt"):
            pytest.skip("not glibc")
        assert fix_malloc_mmap_threshold() is True


@pytest.mark.parametrize(
    "spacing, shape, target",
    [((2.0, 2.0, 2.0), (80, 96, 112), 4.0), ((1.0, 1.2, 0.9), (33, 41, 27), 2.5), ((2.0, 2.0, 2.0), (25, 30, 19), 3.0)],
)
def test_exact_spacing_grid_is_the_grid_monai_spacingd_builds(spacing, shape, target):
    """A network trained on Spacingd-downsampled arrays (brain_mri_joint_affine: 2 mm data at 4 mm) must see the
    same sampling positions and the same array size at inference; "fit_extent" gives a different grid there."""
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    aff = lia_affine(spacing=spacing)
    img = MetaTensor(torch.rand(1, *shape), affine=torch.as_tensor(aff))
    ref = Spacing(pixdim=target, mode="bilinear")(img)
    net_aff, net_shape = network_grid(aff, shape, (target,) * 3, multiple=1, grid_mode="exact_spacing")
    assert net_shape == tuple(ref.shape[1:])
    assert np.allclose(net_aff, ref.affine.numpy(), atol=1e-6)
    # and the resampled intensities are the same (the last voxel along an axis can lie up to half a step past
    # the input, where Spacing repeats the border and we pad with zeros: compared inside the input)
    ours = resample_to_grid(img.as_tensor()[None], aff, net_aff, net_shape)[0]
    assert (ours - ref.as_tensor())[:, :-1, :-1, :-1].abs().max().item() < 1e-4
    fit_aff, fit_shape = network_grid(aff, shape, (target,) * 3, multiple=1)
    assert fit_shape != net_shape or not np.allclose(fit_aff, net_aff, atol=1e-3)


def test_exact_spacing_pads_symmetrically_like_fit_extent():
    aff = lia_affine(spacing=(2.0, 2.0, 2.0))
    net_aff, net_shape = network_grid(aff, (80, 96, 100), (4, 4, 4), multiple=8, grid_mode="exact_spacing")
    # 50 voxels of 4 mm along the last axis, padded to 56: 3 before, so voxel 3 is the old voxel 0 centre
    assert net_shape == (40, 48, 56)
    assert np.allclose(net_aff @ [0, 0, 3, 1], aff @ [0, 0, 0, 1])


def test_network_grid_rejects_an_unknown_grid_mode():
    with pytest.raises(ValueError, match="grid_mode.*'spacingd'"):
        network_grid(np.eye(4), (8, 8, 8), (1, 1, 1), grid_mode="spacingd")


def test_load_registration_pair_rejects_an_unknown_grid_mode_when_built():
    from common.engines.pair_loading import LoadRegistrationPaird

    with pytest.raises(ValueError, match="LoadRegistrationPaird: `grid_mode`.*'spacingd'"):
        LoadRegistrationPaird(spacing=(4, 4, 4), grid_mode="spacingd")


def test_block_average_is_the_training_data_rule_and_keeps_world_positions():
    from common.data.brain.template import TEMPLATE_GRID_1MM, TEMPLATE_GRID_2MM, downsample_image_2x
    from common.geometry import block_average, pool_factors

    rng = np.random.default_rng(0)
    img = rng.random((16, 12, 10)).astype(np.float32)
    aff1 = TEMPLATE_GRID_1MM.affine
    pooled, aff = block_average(torch.as_tensor(img)[None, None], aff1, pool_factors(aff1, 2.0))
    np.testing.assert_allclose(pooled[0, 0].numpy(), downsample_image_2x(img), rtol=1e-6)
    np.testing.assert_allclose(aff, TEMPLATE_GRID_2MM.affine)  # block centres = the 2 mm template grid
    assert pool_factors(aff1, 2.0) == (2, 2, 2)
    assert pool_factors(TEMPLATE_GRID_2MM.affine, 2.0) == (1, 1, 1)
    assert pool_factors(aff1, 4.0) == (4, 4, 4) and pool_factors(aff1, None) == (1, 1, 1)
    odd, _ = block_average(torch.ones(1, 1, 9, 8, 7), aff1, (2, 2, 2))
    assert odd.shape[2:] == (4, 4, 3)  # the last odd voxel of an axis is dropped


def test_load_pair_gives_a_1mm_image_the_2mm_network_input_of_its_2mm_version(tmp_path):
    """A 1 mm image and its 2x2x2 block mean (how the 2 mm training data were made) reach a 2 mm network as the
    same array; with data_spacing unset the 1 mm image is only resampled (aliased), and differs."""
    import nibabel as nib

    from common.data.brain.template import TEMPLATE_GRID_1MM, TEMPLATE_GRID_2MM, downsample_image_2x
    from common.engines.pair_loading import LoadRegistrationPaird

    rng = np.random.default_rng(1)
    img1 = rng.random((32, 32, 32)).astype(np.float32)
    img2 = downsample_image_2x(img1)
    paths = {}
    for name, arr, aff in (("one", img1, TEMPLATE_GRID_1MM.affine), ("two", img2, TEMPLATE_GRID_2MM.affine)):
        nib.save(nib.Nifti1Image(arr, aff), tmp_path / f"{name}.nii.gz")
        paths[name] = str(tmp_path / f"{name}.nii.gz")
    load = LoadRegistrationPaird(spacing=(2.0, 2.0, 2.0), axcodes="LIA", multiple=16, data_spacing=2.0)
    a = load({"moving_image": paths["one"], "fixed_image": paths["one"]})
    b = load({"moving_image": paths["two"], "fixed_image": paths["two"]})
    torch.testing.assert_close(a["geometry"]["net_affine"], b["geometry"]["net_affine"])
    torch.testing.assert_close(a["fixed_image"], b["fixed_image"], atol=1e-5, rtol=0)
    plain = LoadRegistrationPaird(spacing=(2.0, 2.0, 2.0), axcodes="LIA", multiple=16)
    c = plain({"moving_image": paths["one"], "fixed_image": paths["one"]})
    same = c["fixed_image"].shape == b["fixed_image"].shape and torch.allclose(c["fixed_image"], b["fixed_image"])
    assert not same  # resampling alone is not what training saw


def test_warp_to_fixed_without_a_field_equals_a_zero_field_and_is_the_image_on_a_shared_grid():
    gen = torch.Generator().manual_seed(0)
    img = torch.rand((1, 1, 12, 10, 9), generator=gen)
    aff = lia_affine()
    other = np.diag([1.3, 1.3, 1.3, 1.0])
    other[:3, 3] = (-7.0, -6.0, -5.0)
    for target, shape in ((aff, (12, 10, 9)), (other, (8, 9, 7))):
        zero = warp_to_fixed(img, aff, torch.zeros((1, 3, *shape), dtype=torch.float64), target)
        none = warp_to_fixed(img, aff, None, target, fixed_shape=shape)
        assert torch.equal(none, zero)
    assert torch.equal(warp_to_fixed(img, aff, None, aff, fixed_shape=(12, 10, 9)), img)
    with pytest.raises(ValueError, match="fixed_shape"):
        warp_to_fixed(img, aff, None, aff)


def test_slab_by_slab_resampling_gives_the_whole_grid_values():
    """resample_to_grid and ddf_to_fixed_grid go a few planes at a time (memory at 1 mm): bit for bit the values
    of one pass over the whole grid, for an oblique target grid and a batch."""
    import numpy as np
    import torch

    from common.geometry import ddf_to_fixed_grid, resample_to_grid

    torch.manual_seed(0)
    net = np.diag([2.0, 2.0, 2.0, 1.0])
    net[:3, 3] = [-20.0, -24.0, -18.0]
    c, s = np.cos(0.3), np.sin(0.3)
    fixed = np.array([[-c, 0, s, 21.0], [0, 0, 1.0, -25.0], [s, -1.1, 0, 17.0], [0, 0, 0, 1]])
    shape = (23, 17, 19)
    img, ddf = torch.randn(2, 1, 20, 24, 18), torch.randn(2, 3, 20, 24, 18)
    whole = 10**6
    assert torch.equal(
        resample_to_grid(img, net, fixed, shape, slab=3), resample_to_grid(img, net, fixed, shape, slab=whole)
    )
    assert torch.equal(
        ddf_to_fixed_grid(ddf, net, fixed, shape, slab=4), ddf_to_fixed_grid(ddf, net, fixed, shape, slab=whole)
    )
