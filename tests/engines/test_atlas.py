"""Atlas segmentation (the MONAI Label app's engine) on a known answer: the atlas moved by a rigid map."""

from __future__ import annotations

import json
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

ROOT = Path(__file__).resolve().parents[2]
from tests.atlas_case import dice, moved_atlas  # noqa: E402

BUNDLE = ROOT / "bundles" / "brain_mri_hybrid_loss"
TRAINED = (BUNDLE / "models" / "model.pt").is_file() and json.loads(
    (BUNDLE / "configs" / "metadata.json").read_text()
).get("weights_trained", False)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    if not TRAINED:
        pytest.skip(f"{BUNDLE.name} has no trained weights")
    from common.engines.atlas import atlas_segment

    folder = tmp_path_factory.mktemp("atlas")
    image, truth, none = moved_atlas(folder)
    out = folder / "out"
    r = atlas_segment(image, BUNDLE, out)
    return {"r": r, "image": image, "truth": truth, "none": none, "out": out}


def test_labels_on_the_image_grid_match_the_known_answer(result):
    lab, ref = nib.load(result["r"]["labels"]), nib.load(result["image"])
    assert lab.shape == ref.shape and np.allclose(lab.affine, ref.affine, atol=1e-4)
    d, chance = dice(np.asarray(lab.dataobj), result["truth"]), dice(result["none"], result["truth"])
    assert d > 0.75 and d > chance + 0.2, (d, chance)


def test_displacement_field_maps_image_points_to_atlas_points(result):
    """Resample the atlas labels through the written ITK field (raw LPS arithmetic, not our converters)."""
    from common.engines.atlas import default_atlas

    atlas = nib.load(default_atlas(1)[1])
    field = itk.imread(result["r"]["displacement"])
    d = np.asarray(itk.array_from_image(field), dtype=np.float64).transpose(2, 1, 0, 3)
    origin, spacing = np.array(field.GetOrigin()), np.array(field.GetSpacing())
    direction = np.array(field.GetDirection())
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in d.shape[:3]], indexing="ij"), -1).astype(float)
    lps = origin + (idx * spacing) @ direction.T + d
    inv = np.linalg.inv(atlas.affine)
    vox = (lps * np.array([-1, -1, 1])) @ inv[:3, :3].T + inv[:3, 3]
    warped = map_coordinates(np.asarray(atlas.dataobj), vox.reshape(-1, 3).T, order=0).reshape(d.shape[:3])
    ours = np.asarray(nib.load(result["r"]["labels"]).dataobj)
    assert dice(warped, ours) > 0.85  # nearest vs one-hot linear label warping of the same transform
    assert dice(warped, result["truth"]) > 0.75


def test_affine_file_reads_in_itk_and_refuses_overwrite(result):
    from common.engines.atlas import atlas_segment

    tfm = itk.transformread(result["r"]["affine"])
    assert len(tfm) == 1
    rec = json.loads(Path(result["r"]["record"]).read_text())
    assert rec["bundle"] == BUNDLE.name and len(rec["labels_present"]) >= 30
    with pytest.raises(FileExistsError, match="overwrite"):
        atlas_segment(result["image"], BUNDLE, result["out"])


def test_bad_images_are_refused_with_the_file_named(tmp_path):
    from common.engines.atlas import atlas_segment
    from common.io.nifti import ImageReadError

    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), flat)
    with pytest.raises(ImageReadError, match="flat.nii.gz.*constant"):
        atlas_segment(flat, BUNDLE, tmp_path / "o")
    nan = tmp_path / "nan.nii.gz"
    a = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    a[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), nan)
    with pytest.raises(ImageReadError, match="nan.nii.gz.*NaN"):
        atlas_segment(nan, BUNDLE, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_register_pair_without_labels_writes_the_warped_moving_image_on_the_fixed_grid(result, tmp_path):
    """Two images, no labels: the warped moving image is on the fixed grid and closer to it than unregistered."""
    from common.engines.atlas import default_atlas, register_pair

    atlas_t1 = default_atlas(1)[0]
    r = register_pair(atlas_t1, result["image"], BUNDLE, tmp_path / "pair", defer_transform=True)
    assert "labels" not in r and Path(r["record"]).name == "registration.json"
    full = r.pop("pending").result(timeout=300)  # the transform files, written in the background
    assert {k: full[k] for k in r if not k.endswith("seconds")} == {
        k: v for k, v in r.items() if not k.endswith("seconds")
    }
    assert Path(full["displacement"]).is_file() and Path(full["affine"]).is_file()
    warped, fixed = nib.load(r["warped"]), nib.load(result["image"])
    assert warped.shape == fixed.shape and np.allclose(warped.affine, fixed.affine, atol=1e-4)
    a = nib.load(atlas_t1)
    ident = np.linalg.inv(a.affine) @ fixed.affine  # same world points, no registration
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in fixed.shape], indexing="ij")).reshape(3, -1)
    none = map_coordinates(np.asarray(a.dataobj, np.float32), ident[:3, :3] @ idx + ident[:3, 3:4], order=1)

    def ncc(x, y):
        x, y = np.ravel(x) - np.mean(x), np.ravel(y) - np.mean(y)
        return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))

    f = np.asarray(fixed.dataobj, np.float32)
    after, before = ncc(np.asarray(warped.dataobj), f), ncc(none, f)
    assert after > 0.98 and after > before + 0.1, (after, before)  # measured 0.996 vs 0.803
    assert json.loads(Path(r["record"]).read_text())["moving_labels"] is None
