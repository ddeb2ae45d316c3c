"""Learn2Reg displacement files: naming, round trips, 2021 half-resolution variant, scorer replay, errors."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage
import torch
from io_geometry import OASIS_LIA, smooth_field
from scipy.ndimage import map_coordinates

from common.blocks import warp
from common.io import ImageReadError, l2r_disp_name, read_l2r_displacement, write_l2r_displacement
from common.io import l2r as l2r_module


@pytest.mark.parametrize(
    "fixed_id, moving_id, ext, expected",
    [
        (3455, 3456, ".nii.gz", "disp_3455_3456.nii.gz"),
        (7, 12, ".nii.gz", "disp_0007_0012.nii.gz"),
        ("0438", "0439", ".npz", "disp_0438_0439.npz"),
        (np.int64(1), "0002", ".nii", "disp_0001_0002.nii"),
    ],
)
def test_l2r_disp_name(fixed_id, moving_id, ext, expected):
    assert l2r_disp_name(fixed_id, moving_id, ext) == expected


@pytest.mark.parametrize(
    "fixed_id, moving_id, ext, match",
    [
        (-1, 2, ".nii.gz", "fixed_id"),
        (1, "a/b", ".nii.gz", "moving_id"),
        (1, "", ".nii.gz", "moving_id"),
        (1, 2, ".mha", "ext"),
    ],
)
def test_l2r_disp_name_rejects_bad_ids(fixed_id, moving_id, ext, match):
    with pytest.raises(ValueError, match=match):
        l2r_disp_name(fixed_id, moving_id, ext)


def _f16_tol(x: torch.Tensor) -> torch.Tensor:
    return x.abs() * 2.0**-11 + 1e-7  # half of float16's relative spacing, plus a floor


@pytest.mark.parametrize("shape", [(6, 7, 5), (8, 9)])
def test_nifti_round_trip_channels_last(tmp_path, shape):
    ddf = smooth_field(shape, amplitude=5.0).float()
    path = write_l2r_displacement(ddf, tmp_path / l2r_disp_name(1, 2), affine=OASIS_LIA)
    img = nib.load(str(path))
    assert img.shape == (*shape, len(shape))  # channels-last, what the scorer reads
    assert img.get_data_dtype() == np.float32  # NIfTI-1 has no float16
    assert np.allclose(img.affine, OASIS_LIA)
    assert np.allclose(np.moveaxis(img.get_fdata(), -1, 0), ddf[0].numpy(), atol=1e-6)
    back = read_l2r_displacement(path)
    assert back.shape == ddf.shape and back.dtype == torch.float32
    assert torch.equal(back, ddf)


@pytest.mark.parametrize("shape", [(6, 7, 5), (8, 9)])
@pytest.mark.parametrize("dtype, tol", [(None, "f16"), (np.float16, "f16"), (np.float32, 0.0)])
def test_npz_round_trip(tmp_path, shape, dtype, tol):
    ddf = smooth_field(shape, amplitude=5.0).float()
    path = write_l2r_displacement(ddf, tmp_path / l2r_disp_name(1, 2, ".npz"), dtype=dtype)
    back = read_l2r_displacement(path)
    assert back.shape == ddf.shape
    assert ((back - ddf).abs() <= (_f16_tol(ddf) if tol == "f16" else 0.0)).all()
    if tol == "f16":
        assert not torch.equal(back, ddf)  # it really was rounded to float16


def test_npz_is_the_2021_layout(tmp_path):
    ddf = smooth_field((6, 8, 4)).float()
    path = write_l2r_displacement(ddf, tmp_path / "disp_0001_0002.npz")
    with np.load(path) as z:
        arr = z["arr_0"]  # what the 2021 scorer loaded
    assert arr.shape == (3, 6, 8, 4) and arr.dtype == np.float16
    assert ((read_l2r_displacement(path) - ddf).abs() <= _f16_tol(ddf)).all()


def test_half_resolution_stores_half_grid_in_full_resolution_units(tmp_path):
    shape = (32, 36, 28)
    ddf = smooth_field(shape, amplitude=2.0).float()
    path = write_l2r_displacement(ddf, tmp_path / "disp_0001_0002.npz", half_resolution=True)
    with np.load(path) as z:
        stored = z["arr_0"].astype(np.float32)
    assert stored.shape == (3, 16, 18, 14)
    # stored values are samples of the full-resolution field (corner-aligned), NOT divided by 2
    full_corner = ddf[0, :, -1, -1, -1].numpy()
    assert np.allclose(stored[:, -1, -1, -1], full_corner, atol=5e-3)
    back = read_l2r_displacement(path, full_shape=shape)
    # the reader replays the 2021 scorer: zoom(order=2) per component, no rescaling
    replay = np.stack([scipy.ndimage.zoom(stored[i], 2, order=2) for i in range(3)])
    assert np.allclose(back[0].numpy(), replay, atol=1e-6)
    err = (back - ddf).abs()
    assert err.max() < 0.2 and err.mean() < 0.03  # close to the original field (max |u| ~ 5 voxels)


def test_half_resolution_constant_field_is_not_rescaled(tmp_path):
    ddf = torch.full((1, 3, 8, 10, 6), 3.0)
    path = write_l2r_displacement(ddf, tmp_path / "disp_0001_0002.nii.gz", affine=OASIS_LIA, half_resolution=True)
    img = nib.load(str(path))
    assert img.shape == (4, 5, 3, 3)
    # the half grid's corner voxels sit on the full grid's corner voxels
    assert np.allclose(img.affine @ [3, 4, 2, 1], OASIS_LIA @ [7, 9, 5, 1])
    back = read_l2r_displacement(path, full_shape=(8, 10, 6))
    assert torch.allclose(back, ddf)  # 3 voxels stays 3 voxels


def test_file_replayed_by_the_scorer_matches_our_warp(tmp_path):
    """The scorer's recipe (get_fdata, transpose, map_coordinates(identity + disp)) = common.blocks.warp."""
    shape = (12, 14, 10)
    ddf = smooth_field(shape, amplitude=2.0).float()
    rng = np.random.default_rng(1)
    moving = scipy.ndimage.gaussian_filter(rng.normal(size=shape), 1.5).astype(np.float32)
    path = write_l2r_displacement(ddf, tmp_path / "disp_0001_0002.nii.gz")
    disp = nib.load(str(path)).get_fdata()
    identity = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    theirs = map_coordinates(moving, identity + disp.transpose(3, 0, 1, 2), order=1)
    ours = warp(torch.from_numpy(moving)[None, None], ddf)[0, 0].numpy()
    coords = np.stack(identity) + ddf[0].numpy()
    inside = np.all([(coords[k] >= 0) & (coords[k] <= shape[k] - 1) for k in range(3)], axis=0)
    assert inside.mean() > 0.5
    assert np.abs(theirs - ours)[inside].max() < 1e-5


def _read_errors(tmp_path):
    np.savez(tmp_path / "nokey.npz", other=np.zeros((3, 2, 2, 2)))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), str(tmp_path / "wrong.nii.gz"))
    nan = np.zeros((4, 4, 4, 3), np.float32)
    nan[0, 0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    itk_like = np.zeros((4, 4, 4, 1, 3), np.float32)  # ITK/ANTs 5D vector layout: mm, not voxels
    nib.save(nib.Nifti1Image(itk_like, np.eye(4)), str(tmp_path / "itk5d.nii.gz"))
    return ["missing.nii.gz", "nokey.npz", "wrong.nii.gz", "nan.nii.gz", "junk.nii.gz", "itk5d.nii.gz"]


def test_read_errors_name_the_file(tmp_path):
    for name in _read_errors(tmp_path):
        with pytest.raises(ImageReadError, match=name.split(".")[0]):
            read_l2r_displacement(tmp_path / name)


@pytest.mark.parametrize(
    "ddf, kwargs, match",
    [
        (torch.zeros(1, 2, 4, 4, 4), {}, "ddf.*2 channels"),
        (torch.zeros(1, 4, 4, 4, 4), {}, "ddf.*4 channels"),
        (torch.full((1, 3, 4, 4, 4), float("nan")), {}, "ddf.*NaN"),
        (torch.zeros(2, 3, 4, 4, 4), {}, "ddf.*batch 1"),
        (torch.zeros(1, 3, 5, 4, 4), {"half_resolution": True}, "half_resolution"),
        (torch.zeros(1, 3, 4, 4, 4), {"affine": np.eye(3)}, "affine"),
        (torch.zeros(1, 3, 4, 4, 4), {"dtype": np.float16}, "dtype.*npz"),
        (torch.zeros(1, 3, 4, 4, 4), {"dtype": np.int16}, "dtype"),
    ],
)
def test_write_rejects_bad_inputs(tmp_path, ddf, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_l2r_displacement(ddf, tmp_path / "disp_0001_0002.nii.gz", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_float16_overflow(tmp_path):
    with pytest.raises(ValueError, match="float16"):
        write_l2r_displacement(torch.full((1, 3, 4, 4, 4), 1e5), tmp_path / "disp_0001_0002.npz")
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="path"):
        write_l2r_displacement(torch.zeros(1, 3, 2, 2, 2), tmp_path / "disp.mha")


def test_failed_write_leaves_no_temp_file_and_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "disp_0001_0002.nii.gz"
    write_l2r_displacement(torch.ones(1, 3, 4, 4, 4), target)
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(l2r_module.nib, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write_l2r_displacement(torch.zeros(1, 3, 4, 4, 4), target)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert target.read_bytes() == before
