"""ITK displacement field files and affine transform files, read back with ITK itself."""

from __future__ import annotations

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from io_geometry import OASIS_LIA, oblique_lia, smooth_field

from common.io import (
    ImageReadError,
    itk_affine,
    read_itk_affine,
    read_itk_displacement,
    write_itk_affine,
    write_itk_displacement,
)

pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")  # SWIG, on importing ITK

SHAPE = (7, 9, 6)
LPS = np.diag([-1.0, -1.0, 1.0])


def _expected_lps(ddf: torch.Tensor, affine: np.ndarray, idx: tuple[int, int, int]) -> np.ndarray:
    """Hand computation: LPS mm displacement at nibabel voxel ``idx`` = P A u(idx)."""
    return LPS @ affine[:3, :3] @ ddf[(0, slice(None), *idx)].numpy()


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz", ".nrrd"])
@pytest.mark.parametrize("affine", [OASIS_LIA, oblique_lia()], ids=["oasis_lia", "oblique_aniso_lia"])
def test_field_file_read_by_itk_holds_lps_mm(tmp_path, suffix, affine):
    ddf = smooth_field(SHAPE, amplitude=2.0)
    path = write_itk_displacement(ddf, affine, tmp_path / f"field{suffix}")
    field = itk.imread(str(path))
    assert field.GetNumberOfComponentsPerPixel() == 3
    assert tuple(field.GetLargestPossibleRegion().GetSize()) == SHAPE  # ITK index order = nibabel order
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    assert np.allclose(tuple(field.GetSpacing()), spacing, atol=1e-5)
    assert np.allclose(tuple(field.GetOrigin()), LPS @ affine[:3, 3], atol=1e-4)
    direction = itk.array_from_matrix(field.GetDirection())
    assert np.allclose(direction, LPS @ affine[:3, :3] / spacing, atol=1e-5)
    for idx in [(0, 0, 0), (6, 8, 5), (3, 1, 4), (2, 7, 0)]:
        value = np.array(field.GetPixel(idx), dtype=np.float64)  # ITK index [i, j, k]
        assert np.allclose(value, _expected_lps(ddf, affine, idx), atol=1e-5)
    # and the physical point of that index is the nibabel voxel's point in LPS
    p = np.array(field.TransformIndexToPhysicalPoint((3, 1, 4)))
    assert np.allclose(p, LPS @ (affine @ [3, 1, 4, 1.0])[:3], atol=1e-4)


def test_unit_step_along_array_axis_0_of_real_data_is_plus_x_in_lps(tmp_path):
    ddf = torch.zeros(1, 3, *SHAPE)
    ddf[:, 0] = 1.0  # LIA: axis 0 points Left, which is +x in LPS
    field = itk.imread(str(write_itk_displacement(ddf, OASIS_LIA, tmp_path / "f.mha")))
    assert np.allclose(np.array(field.GetPixel((2, 3, 4))), [1.0, 0.0, 0.0])


def test_nifti_field_header_is_itk_vector_intent(tmp_path):
    path = write_itk_displacement(smooth_field(SHAPE), oblique_lia(), tmp_path / "f.nii.gz")
    img = nib.load(str(path))
    assert img.shape == (*SHAPE, 1, 3)
    assert int(img.header["intent_code"]) == 1007  # NIFTI_INTENT_VECTOR
    assert np.allclose(img.affine, oblique_lia(), atol=1e-4)


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz"])
@pytest.mark.parametrize("moving", [None, oblique_lia(spacing=(1.0, 1.1, 0.8), degrees=-5.0, origin=(3.0, 2.0, 1.0))])
def test_field_round_trip(tmp_path, suffix, moving):
    ddf = smooth_field(SHAPE, amplitude=3.0)
    path = write_itk_displacement(ddf, oblique_lia(), tmp_path / f"f{suffix}", moving_affine=moving)
    back, affine = read_itk_displacement(path, moving_affine=moving)
    assert back.shape == ddf.shape and back.dtype == torch.float32
    assert torch.allclose(back.double(), ddf, atol=2e-5)
    assert np.allclose(affine, oblique_lia(), atol=1e-4)


def test_2d_field_round_trip(tmp_path):
    aff = np.array([[0.0, -0.7, 5.0], [1.3, 0.0, -2.0], [0.0, 0.0, 1.0]])
    ddf = smooth_field((8, 6), amplitude=2.0)
    path = write_itk_displacement(ddf, aff, tmp_path / "f2d.mha")
    field = itk.imread(str(path))
    assert field.GetImageDimension() == 2
    expected = np.diag([-1.0, -1.0]) @ aff[:2, :2] @ ddf[0, :, 5, 2].numpy()
    assert np.allclose(np.array(field.GetPixel((5, 2))), expected, atol=1e-5)
    back, affine = read_itk_displacement(path)
    assert torch.allclose(back.double(), ddf, atol=2e-5) and np.allclose(affine, aff)


def test_2d_nii_gz_field_honours_the_gzip_level(tmp_path):
    import gzip

    aff = np.diag([0.7, 1.3, 1.0])
    ddf = torch.zeros(1, 2, 40, 30, dtype=torch.float64)  # compresses to almost nothing, unless stored
    ddf[0, 0, 5, 7] = 1.5
    paths = {lvl: write_itk_displacement(ddf, aff, tmp_path / f"f{lvl}.nii.gz", compresslevel=lvl) for lvl in (0, 6)}
    data = {lvl: p.read_bytes() for lvl, p in paths.items()}
    assert gzip.decompress(data[0]) == gzip.decompress(data[6])  # same ITK bytes inside
    assert len(data[0]) > len(gzip.decompress(data[0])) > 10 * len(data[6])  # level 0: stored blocks
    back, affine = read_itk_displacement(paths[0])
    assert torch.allclose(back.double(), ddf, atol=1e-6) and np.allclose(affine, aff)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.nii.gz", "f6.nii.gz"]  # no temporary left


@pytest.mark.parametrize("slab_bytes", [4 << 20, 200], ids=["one_slab", "many_slabs"])
@pytest.mark.parametrize(
    "fixed, moving",
    [
        (OASIS_LIA, None),
        (np.diag([-1.5, 2.0, 0.8, 1.0]), None),
        (oblique_lia(), oblique_lia(spacing=(1.0, 1.1, 0.8), degrees=-5.0, origin=(3.0, 2.0, 1.0))),
    ],
    ids=["oasis_lia", "flipped_aniso", "oblique_two_grids"],
)
def test_streamed_nifti_holds_itks_bytes_and_geometry(tmp_path, monkeypatch, slab_bytes, fixed, moving):
    """With a gzip level (what inference uses) 3D .nii/.nii.gz fields are streamed by this module without ITK: the
    data bytes must be exactly those of ITK's own NIfTI writer, and the header the same geometry and layout."""
    import gzip

    from common.io import itk_field

    monkeypatch.setattr(itk_field, "_SLAB_BYTES", slab_bytes)
    ddf = smooth_field(SHAPE, amplitude=2.5)
    itk.imwrite(itk_field.ddf_to_itk_field(ddf, fixed, moving), str(tmp_path / "itk.nii"), compression=False)
    reference = (tmp_path / "itk.nii").read_bytes()
    streamed = write_itk_displacement(ddf, fixed, tmp_path / "f.nii.gz", moving_affine=moving, compresslevel=0)
    raw = write_itk_displacement(ddf, fixed, tmp_path / "f.nii", moving_affine=moving, compresslevel=1)
    ours = gzip.decompress(streamed.read_bytes())
    assert raw.read_bytes() == ours and len(ours) == len(reference) and ours[352:] == reference[352:]
    mine, theirs = nib.Nifti1Header(ours[:348]), nib.Nifti1Header(reference[:348])
    for key in theirs.keys():  # the same header, except the quaternion's sign (q and -q: the same rotation) and
        if key.startswith(("quatern", "srow")):  # float32 rounding of ITK's direction x spacing products
            continue
        assert np.array_equal(mine[key], theirs[key]), key
    assert np.allclose(mine.get_qform(), theirs.get_qform(), atol=1e-6)
    assert np.allclose(mine.get_sform(), theirs.get_sform(), atol=1e-6)
    # what ITK reads from our file: the same geometry and the same vectors as from its own
    a, b = itk.imread(str(streamed)), itk.imread(str(tmp_path / "itk.nii"))
    assert np.allclose(tuple(a.GetOrigin()), tuple(b.GetOrigin()), atol=1e-5)
    assert np.allclose(tuple(a.GetSpacing()), tuple(b.GetSpacing()), atol=1e-6)
    assert np.allclose(itk.array_from_matrix(a.GetDirection()), itk.array_from_matrix(b.GetDirection()), atol=1e-6)
    assert np.array_equal(itk.array_from_image(a), itk.array_from_image(b))
    back, affine = read_itk_displacement(streamed, moving_affine=moving)
    assert torch.allclose(back.double(), ddf, atol=2e-5) and np.allclose(affine, fixed, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_writing_a_streamed_field_does_not_load_itk(tmp_path):
    import subprocess
    import sys

    code = ("import sys, torch, numpy as np; from common.io.itk_field import write_itk_displacement; "
            f"write_itk_displacement(torch.zeros(1, 3, 4, 5, 6), np.eye(4), {str(tmp_path / 'f.nii.gz')!r}, "
            "compresslevel=0); print('itk' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("suffix", [".tfm", ".txt", ".mat"])
@pytest.mark.parametrize("moving", [None, oblique_lia(spacing=(1.0, 1.0, 2.0), degrees=20.0)])
def test_affine_file_maps_fixed_points_to_moving_points(tmp_path, suffix, moving):
    fixed = oblique_lia()
    m_aff = fixed if moving is None else moving
    mat = torch.tensor([[[1.05, 0.1, -0.05, 0.7], [-0.08, 0.95, 0.06, -1.2], [0.03, -0.04, 1.1, 0.5]]])
    path = write_itk_affine(mat, fixed, moving, tmp_path / f"affine{suffix}", shape=SHAPE)
    (transform,) = itk.transformread(str(path))
    assert transform.GetNameOfClass() == "AffineTransform"
    c = (np.array(SHAPE) - 1) / 2
    a, t = mat[0, :, :3].double().numpy(), mat[0, :, 3].double().numpy()
    for x in ([0, 0, 0], [6, 8, 5], [2, 5, 3]):
        y = a @ (np.array(x) - c) + c + t  # the project's fixed voxel -> moving voxel
        p_fixed = LPS @ (fixed @ np.append(x, 1.0))[:3]
        p_moving = LPS @ (m_aff @ np.append(y, 1.0))[:3]
        assert np.allclose(np.array(transform.TransformPoint(p_fixed.tolist())), p_moving, atol=1e-9)
    back = read_itk_affine(path, fixed, moving, shape=SHAPE)
    assert torch.allclose(back.float(), mat, atol=1e-6)


@pytest.mark.parametrize(
    "ddf, affine, match",
    [
        (torch.zeros(1, 2, 4, 4), OASIS_LIA, "fixed_affine.*3x3"),  # a 2D field for a 3D image
        (torch.zeros(1, 2, 4, 4, 4), OASIS_LIA, "ddf.*2 channels"),
        (torch.zeros(1, 4, 4, 4, 4), OASIS_LIA, "ddf.*4 channels"),
        (torch.full((1, 3, 4, 4, 4), float("nan")), OASIS_LIA, "ddf.*NaN"),
        (torch.zeros(2, 3, 4, 4, 4), OASIS_LIA, "ddf.*batch 1"),
        (
            torch.zeros(1, 3, 4, 4, 4),
            np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
            "shear",
        ),
    ],
)
def test_write_field_rejects_bad_inputs(tmp_path, ddf, affine, match):
    with pytest.raises(ValueError, match=match):
        write_itk_displacement(ddf, affine, tmp_path / "f.mha")
    assert list(tmp_path.iterdir()) == []


def test_bad_suffixes_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="path"):
        write_itk_displacement(torch.zeros(1, 3, 2, 2, 2), OASIS_LIA, tmp_path / "f.png")
    with pytest.raises(ValueError, match="path"):
        write_itk_affine(torch.eye(3, 4)[None], OASIS_LIA, None, tmp_path / "a.nii.gz", shape=(2, 2, 2))
    with pytest.raises(ValueError, match="matrix"):
        write_itk_affine(torch.eye(3, 3)[None], OASIS_LIA, None, tmp_path / "a.tfm", shape=(2, 2, 2))
    with pytest.raises(ImageReadError, match="missing"):
        read_itk_displacement(tmp_path / "missing.mha")
    with pytest.raises(ImageReadError, match="missing"):
        read_itk_affine(tmp_path / "missing.tfm", OASIS_LIA, None, shape=(2, 2, 2))
    scalar = tmp_path / "scalar.mha"
    itk.imwrite(itk.image_from_array(np.zeros((2, 3, 4), np.float32)), str(scalar))
    with pytest.raises(ImageReadError, match="scalar.mha.*components"):
        read_itk_displacement(scalar)


def test_failed_write_leaves_no_temp_file_and_keeps_old_file(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("writer failed")

    field_path, tfm_path = tmp_path / "f.mha", tmp_path / "a.tfm"
    write_itk_displacement(torch.zeros(1, 3, 4, 4, 4), OASIS_LIA, field_path)
    write_itk_affine(torch.eye(3, 4)[None], OASIS_LIA, None, tfm_path, shape=(4, 4, 4))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(itk, "imwrite", boom)
    with pytest.raises(RuntimeError, match="writer failed"):
        write_itk_displacement(torch.ones(1, 3, 4, 4, 4), OASIS_LIA, field_path)
    monkeypatch.setattr(itk_affine, "_tfm_text", boom)
    with pytest.raises(RuntimeError, match="writer failed"):
        write_itk_affine(2 * torch.eye(3, 4)[None], OASIS_LIA, None, tfm_path, shape=(4, 4, 4))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
