"""Proof that our field and affine files mean what we say: common.blocks agrees with ITK's own resampling.

For geometries like the real data (LIA), oblique and anisotropic ones, and a moving image on another grid, the
DDF is converted by common.io to an ITK displacement field (also written to and read back from files) and
``itk.WarpImageFilter`` must reproduce :func:`common.blocks.warp` at every voxel whose sample point lies
inside the moving image (both interpolate linearly at the same continuous index, so they agree to float32
round-off, far below the 1e-4 tolerance). The same holds for ``itk.ResampleImageFilter`` with the written
affine transform file versus :class:`common.blocks.AffineTransform`. Negative controls (RAS instead of LPS,
components in the wrong order) must disagree, so the test can fail.
"""

from __future__ import annotations

import itk
import numpy as np
import pytest
import scipy.ndimage
import torch
from monai.data.itk_torch_bridge import monai_to_itk_ddf

from common.blocks import AffineTransform, warp
from common.io import (
    array_to_itk_image,
    ddf_to_itk_field,
    itk_image_to_array,
    voxel_to_physical,
    write_itk_affine,
    write_itk_displacement,
)

pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")

TOL = 1e-4
SHAPE_3D = (14, 16, 12)
SHAPE_2D = (20, 17)


def _rotation(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    return rz @ rx


def _lia(spacing=(1.0, 1.0, 1.0), degrees: float = 0.0, origin=(80.0, -112.0, 96.0)) -> np.ndarray:
    """LIA axes like /work/shared/data/brain_t1_oasis (array axes 0, 1, 2 = Left, Inferior, Anterior)."""
    lia = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
    out = np.eye(4)
    out[:3, :3] = _rotation(degrees) @ lia @ np.diag(spacing)
    out[:3, 3] = origin
    return out


AFFINE_2D = np.array([[0.0, -0.7, 5.0], [1.3, 0.0, -2.0], [0.0, 0.0, 1.0]])
GEOMETRIES = {
    "oasis_lia_1mm": (SHAPE_3D, _lia(), None),
    "oblique_anisotropic_lia": (SHAPE_3D, _lia((1.2, 0.9, 1.5), 10.0, (30.0, -20.0, 15.0)), None),
    "moving_on_other_grid": (
        SHAPE_3D,
        _lia((1.2, 0.9, 1.5), 10.0, (30.0, -20.0, 15.0)),
        _lia((1.0, 1.1, 0.8), -5.0, (31.0, -19.0, 14.0)),
    ),
    "2d_rotated_anisotropic": (SHAPE_2D, AFFINE_2D, AFFINE_2D @ np.diag([1.1, 0.9, 1.0])),
}


def _smooth(shape, scale: float, seed: int, sigma: float = 2.0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=shape)
    out = scipy.ndimage.gaussian_filter(noise, sigma)
    return out / out.std() * scale


def _field(shape, amplitude: float = 1.5, seed: int = 0) -> torch.Tensor:
    """Smooth random displacement ``(1, D, *S)`` in voxels, up to a few voxels."""
    return torch.tensor(np.stack([_smooth(shape, amplitude, seed + k, sigma=3.0) for k in range(len(shape))]))[None]


def _inside(ddf: torch.Tensor) -> np.ndarray:
    shape = ddf.shape[2:]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    y = grid + ddf[0].numpy()
    return np.all([(y[k] >= 1e-4) & (y[k] <= shape[k] - 1 - 1e-4) for k in range(len(shape))], axis=0)


def _itk_warp(moving: np.ndarray, moving_affine, field, fixed_affine, shape) -> np.ndarray:
    mov = array_to_itk_image(moving, moving_affine)
    ref = array_to_itk_image(np.zeros(shape, np.float32), fixed_affine)
    image_type = type(mov)
    f = itk.WarpImageFilter[image_type, image_type, type(field)].New(Input=mov, DisplacementField=field)
    f.SetOutputParametersFromImage(ref)
    f.Update()
    return itk_image_to_array(f.GetOutput())[0]


def _itk_resample(moving: np.ndarray, moving_affine, transform, fixed_affine, shape) -> np.ndarray:
    mov = array_to_itk_image(moving, moving_affine)
    ref = array_to_itk_image(np.zeros(shape, np.float32), fixed_affine)
    f = itk.ResampleImageFilter[type(mov), type(mov)].New(Input=mov, Transform=transform)
    f.SetOutputParametersFromImage(ref)
    f.Update()
    return itk_image_to_array(f.GetOutput())[0]


def _case(name: str):
    shape, fixed, moving = GEOMETRIES[name]
    moving_arr = _smooth(shape, 1.0, seed=7).astype(np.float32)
    ddf = _field(shape)
    ours = warp(torch.from_numpy(moving_arr).double()[None, None], ddf)[0, 0].numpy()
    inside = _inside(ddf)
    assert inside.mean() > 0.4, "too few voxels sample inside the moving image for a meaningful comparison"
    return shape, fixed, moving, moving_arr, ddf, ours, inside


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_warp_image_filter_agrees_with_our_warp(name):
    shape, fixed, moving, moving_arr, ddf, ours, inside = _case(name)
    field = ddf_to_itk_field(ddf, fixed, moving)
    theirs = _itk_warp(moving_arr, fixed if moving is None else moving, field, fixed, shape)
    err = np.abs(theirs - ours)[inside]
    assert err.max() < TOL, f"{name}: max |ITK - ours| = {err.max():.2e} over {inside.sum()} interior voxels"


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz", ".nrrd"])
@pytest.mark.parametrize("name", ["oblique_anisotropic_lia", "moving_on_other_grid"])
def test_field_files_read_by_itk_agree_with_our_warp(tmp_path, name, suffix):
    shape, fixed, moving, moving_arr, ddf, ours, inside = _case(name)
    path = write_itk_displacement(ddf, fixed, tmp_path / f"field{suffix}", moving_affine=moving)
    field = itk.imread(str(path))  # ITK's own reader, nothing of ours
    theirs = _itk_warp(moving_arr, fixed if moving is None else moving, field, fixed, shape)
    assert np.abs(theirs - ours)[inside].max() < TOL


def _wrong_ras_components(ddf, fixed, moving):
    disp = voxel_to_physical(ddf, fixed, moving, lps=False)  # forgot RAS -> LPS
    field = ddf_to_itk_field(torch.zeros_like(ddf), fixed, moving)
    arr = itk.array_view_from_image(field)
    arr[...] = disp[0].numpy().transpose(3, 2, 1, 0)
    return field


def _wrong_component_order(ddf, fixed, moving):
    return ddf_to_itk_field(ddf.flip(1), fixed, moving)  # components in ITK's numpy axis order


@pytest.mark.parametrize("mistake", [_wrong_ras_components, _wrong_component_order])
def test_negative_controls_disagree(mistake):
    shape, fixed, moving, moving_arr, ddf, ours, inside = _case("oblique_anisotropic_lia")
    theirs = _itk_warp(moving_arr, fixed, mistake(ddf, fixed, moving), fixed, shape)
    assert np.abs(theirs - ours)[inside].max() > 0.2  # the image has unit std: a wrong field is visible


def test_same_field_as_monai_itk_bridge():
    """MONAI's monai_to_itk_ddf takes a field in ITK's array order; fed that, it must give our field."""
    shape, fixed, _, _, ddf, _, _ = _case("oblique_anisotropic_lia")
    image = array_to_itk_image(np.zeros(shape, np.float32), fixed)
    itk_order = ddf[0].numpy().transpose(0, 3, 2, 1)[::-1].copy()  # spatial axes and components reversed
    theirs = itk.array_from_image(monai_to_itk_ddf(image, itk_order))
    ours = itk.array_from_image(ddf_to_itk_field(ddf, fixed))
    assert np.abs(theirs - ours).max() < 1e-5


MATRIX_3D = torch.tensor([[[1.05, 0.1, -0.05, 0.7], [-0.08, 0.95, 0.06, -1.2], [0.03, -0.04, 1.1, 0.5]]])
MATRIX_2D = torch.tensor([[[0.97, 0.12, 0.8], [-0.1, 1.06, -0.6]]])


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_resample_with_written_affine_file_agrees_with_affine_block(tmp_path, name):
    shape, fixed, moving, *_ = GEOMETRIES[name]
    matrix = (MATRIX_3D if len(shape) == 3 else MATRIX_2D).double()
    moving_arr = _smooth(shape, 1.0, seed=3).astype(np.float32)
    ours, ddf = AffineTransform()(torch.from_numpy(moving_arr).double()[None, None], matrix)
    inside = _inside(ddf)
    assert inside.mean() > 0.4
    path = write_itk_affine(matrix, fixed, moving, tmp_path / "affine.tfm", shape=shape)
    (transform,) = itk.transformread(str(path))  # ITK's own reader
    theirs = _itk_resample(moving_arr, fixed if moving is None else moving, transform, fixed, shape)
    assert np.abs(theirs - ours[0, 0].numpy())[inside].max() < TOL
    if name == "oblique_anisotropic_lia":  # negative control: the same numbers without RAS -> LPS
        from common.io.convert import centred_affine_to_physical

        t_ras = centred_affine_to_physical(matrix, shape, fixed, moving, lps=False)
        wrong = itk.AffineTransform[itk.D, 3].New()
        wrong.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(t_ras[:3, :3])))
        wrong.SetTranslation([float(v) for v in t_ras[:3, 3]])
        bad = _itk_resample(moving_arr, fixed, wrong, fixed, shape)
        assert np.abs(bad - ours[0, 0].numpy())[inside].max() > 0.2
