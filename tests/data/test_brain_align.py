"""ITK affine pre-alignment (tiny volumes) and the real OASIS / demo-pair loaders."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from common.data.brain import align as A
from common.data.brain import oasis as O
from common.data.brain.template import Grid
from common.io.nifti import ImageReadError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _phantom(n: int = 40) -> np.ndarray:
    """T1-like blob with four distinct off-centre inclusions, so that every affine parameter is identifiable."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    r = np.sqrt((z / 0.75) ** 2 + (y / 0.85) ** 2 + (x / 0.65) ** 2)
    img = np.where(r < 0.9, 0.3, 0.0)
    blobs = [((0.35, 0.3, 0.0), 0.9, 0.25), ((-0.3, 0.35, 0.2), 0.6, 0.2), ((0.0, -0.4, -0.25), 0.75, 0.22),
             ((-0.3, -0.3, 0.3), 0.1, 0.2)]  # fmt: skip
    for (cz, cy, cx), value, radius in blobs:
        img[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < radius**2] = value
    return ndimage.gaussian_filter(img.astype(np.float32), 0.7)


def test_affine_align_recovers_known_transform():
    n = 40
    fixed = _phantom(n)
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    aff[:3, 3] = -1.5 * (n - 1)
    # moving = fixed seen through a known world map (rotation 12 deg about z, scale 1.1, shift)
    c, s = np.cos(np.deg2rad(12)), np.sin(np.deg2rad(12))
    truth = np.eye(4)
    truth[:3, :3] = 1.1 * np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    truth[:3, 3] = [6.0, -4.0, 3.0]
    grid = Grid((n, n, n), aff)
    from common.geometry import resample_array

    moving = resample_array(fixed, aff, grid, order=1, world=np.linalg.inv(truth))
    labels = (moving > 0.5).astype(np.uint8)
    res = A.affine_align((moving, aff), (fixed, aff), moving_labels=(labels, aff), grid=grid,
                         levels=(2, 1), iterations=(150, 80), sampling=0.5)  # fmt: skip
    # moving(p) = fixed(truth^-1 p), so the template -> moving point map is `truth` itself
    np.testing.assert_allclose(res.world[:3, :3], truth[:3, :3], atol=0.02)
    np.testing.assert_allclose(res.world[:3, 3], truth[:3, 3], atol=0.5)  # mm, voxels are 3 mm
    assert np.corrcoef(res.image.ravel(), fixed.ravel())[0, 1] > 0.98
    assert set(np.unique(res.labels)) <= {0, 1} and res.seconds > 0
    np.testing.assert_allclose(A.itk_to_world_matrix(res.transform), res.world)


def test_label_to_label_alignment_recovers_shift():
    from tests.data.test_brain_synth import tiny_label_map

    atlas = tiny_label_map(40)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    moving = np.roll(atlas, (3, -2, 2), axis=(0, 1, 2))  # brain shifted by (6, -4, 4) mm
    res = A.affine_align((moving, aff), (atlas.astype(np.float32), aff), template_labels=(atlas, aff), mode="labels",
                         grid=Grid(atlas.shape, aff), iterations=(100, 50), sampling=0.5)  # fmt: skip
    np.testing.assert_allclose(res.world[:3, 3], [6.0, -4.0, 4.0], atol=0.6)
    assert np.mean(res.labels == atlas) > 0.97 > np.mean(moving == atlas)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "points"}, "mode must be"),
        ({"levels": (2, 1), "iterations": (10,)}, "same length"),
        ({"metric": "ncc"}, "metric must be"),
        ({"template_labels": (np.ones((4, 4, 4)), np.eye(4))}, "only used with mode='labels'"),
    ],
)
def test_affine_align_argument_errors(kwargs, match):
    vol = (np.ones((4, 4, 4), np.float32), np.eye(4))
    with pytest.raises(ValueError, match=match):
        A.affine_align(vol, vol, **kwargs)


def test_affine_align_input_errors(tmp_path):
    vol = (np.ones((8, 8, 8), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="brain mask is empty"):
        A.affine_align((np.zeros((8, 8, 8), np.float32), np.eye(4)), vol)
    with pytest.raises(ValueError, match="does not match the image"):
        A.affine_align(vol, vol, moving_labels=(np.ones((8, 8, 7), np.uint8), np.eye(4)))
    with pytest.raises(ImageReadError, match="missing.nii.gz: file not found"):
        A.affine_align(tmp_path / "missing.nii.gz", vol)
    with pytest.raises(TypeError, match="must be a path"):
        A.affine_align(42, vol)


def test_label_pseudo_image_is_t1_like():
    lab = np.zeros((6, 6, 6), np.int32)
    lab[1], lab[2], lab[3], lab[4] = 2, 3, 4, 507
    img = A.label_pseudo_image(lab, sigma=0)
    assert img[1].mean() > img[2].mean() > img[3].mean() > 0 == img[4].max() == img[0].max()


def test_load_onehot_labels(tmp_path):
    onehot = np.zeros((4, 4, 4, 3), np.uint8)
    onehot[0, 0, 0, 2] = onehot[1, 1, 1, 0] = 1
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(onehot, np.eye(4)), str(path))
    lab = O.load_onehot_labels(path)
    assert lab[0, 0, 0] == 3 and lab[1, 1, 1] == 1 and lab.sum() == 4
    img = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 5), np.float32), np.eye(4)), str(img))
    with pytest.raises(ImageReadError, match="does not match the image"):
        O.load_onehot_labels(path, img)
    onehot[0, 0, 0, 1] = 1
    nib.save(nib.Nifti1Image(onehot, np.eye(4)), str(path))
    with pytest.raises(ImageReadError, match="more than one channel"):
        O.load_onehot_labels(path)


def test_list_oasis_t1(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        O.list_oasis_t1(tmp_path / "none")
    for name in O.OASIS_T1_FILES.values():
        (tmp_path / name).write_bytes(b"")
    (tmp_path / O.OASIS_A_SEG13).write_bytes(b"")
    items = O.list_oasis_t1(tmp_path)
    assert [i["id"] for i in items] == ["oasis_a", "oasis_b", "oasis_c", "oasis_d"]
    assert "label_onehot" in items[0] and "label_onehot" not in items[1]
    (tmp_path / O.OASIS_T1_FILES["oasis_c"]).unlink()
    with pytest.raises(FileNotFoundError, match="oasis_c_t1_160x192x224.nii.gz: file not found"):
        O.list_oasis_t1(tmp_path)


def test_demo_pair_ships_with_repo(tmp_path):
    pair = O.demo_pair()
    for key in ("moving_image", "fixed_image"):
        img = nib.load(pair[key])
        assert img.shape == (160, 192, 224) and nib.aff2axcodes(img.affine) == ("L", "I", "A")
    with pytest.raises(FileNotFoundError, match="moving_t1.nii.gz: file not found"):
        O.demo_pair(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "brain_label_maps").is_dir(), reason="shared label maps not on this machine")
def test_real_label_map_aligns_to_template(tmp_path):
    """One real 256^3 map through the cached alignment: Dice with the template atlas well above chance."""
    from common.data.brain.labels import remap_to_eval
    from common.data.brain.synthetic import align_label_map
    from common.data.brain.template import build_template

    paths = build_template()
    seg = SHARED / "brain_label_maps" / "training_seg_02.nii.gz"
    r = align_label_map(seg, paths.image_2mm, tmp_path, template_labels=paths.labels_2mm)
    lab = remap_to_eval(nib.load(str(r["label_1mm"])).get_fdata())
    atlas = remap_to_eval(nib.load(str(paths.labels_1mm)).get_fdata())
    dice = [2 * ((lab == k) & (atlas == k)).sum() / ((lab == k).sum() + (atlas == k).sum()) for k in (1, 2, 19, 20)]
    assert min(dice) > 0.5, dice
    again = align_label_map(seg, paths.image_2mm, tmp_path, template_labels=paths.labels_2mm)
    assert again["cached"]
