"""Brain label sets, T1 class table, subject split (maps 17-20 never train), held-out pair synthesis."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.brain import labels as L
from common.data.brain import synthetic as S
from common.io.nifti import ImageReadError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "brain_label_maps"


def test_eval_label_set():
    assert len(L.BRAIN_EVAL_LABELS) == 32 and list(L.BRAIN_EVAL_CODES) == sorted(L.BRAIN_EVAL_CODES)
    assert not set(L.EXTRA_CEREBRAL_CODES) & set(L.BRAIN_EVAL_CODES)
    assert set(L.EVAL_MERGE.values()) <= set(L.BRAIN_EVAL_CODES)


@pytest.mark.parametrize(
    "codes, consecutive, expected",
    [
        ([0, 2, 3, 60, 24], True, [0, 1, 2, 32, 16]),
        ([507, 85, 999], True, [0, 0, 0]),
        ([25, 57, 136, 164], True, [1, 19, 3, 22]),
        ([25, 42, 507], False, [2, 42, 0]),
    ],
)
def test_remap_to_eval(codes, consecutive, expected):
    assert L.remap_to_eval(np.array(codes), consecutive).tolist() == expected


@pytest.mark.parametrize("bad, match", [(np.array([1.5]), "non-integer"), (np.array([-2]), "negative")])
def test_remap_to_eval_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        L.remap_to_eval(bad)


def test_t1_class_table_orders_tissues():
    mean = {code: L.T1_PRIOR_MEANS[0, cls] for code, cls in L.T1_PRIOR_CLASS.items()}
    assert mean[2] > mean[3] > mean[4] > mean[0]  # WM > cortex > ventricle > background
    assert mean[13] > mean[12] > mean[11] > mean[3]  # pallidum > putamen > caudate > cortex
    for left, right in [(2, 41), (3, 42), (17, 53), (12, 51)]:
        assert L.T1_PRIOR_CLASS[left] == L.T1_PRIOR_CLASS[right]
    assert max(L.T1_PRIOR_CLASS.values()) + 1 == L.T1_PRIOR_MEANS.shape[1] == 25


def test_read_labels_table_and_priors(tmp_path):
    table = tmp_path / "labels_table.txt"
    table.write_text("intro text\n\nlabels    structures\n0         background\n2         left cerebral white matter\n")
    assert L.read_labels_table(table) == {0: "background", 2: "left cerebral white matter"}
    (tmp_path / "bad.txt").write_text("no header here\n")
    with pytest.raises(ValueError, match="bad.txt: no 'labels"):
        L.read_labels_table(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        L.read_labels_table(tmp_path / "missing.txt")
    np.save(tmp_path / "prior_means_t1.npy", np.zeros((2, 3)))
    np.save(tmp_path / "prior_stds_t1.npy", np.zeros((2, 25)))
    with pytest.raises(ValueError, match=r"prior_means_t1.npy: expected shape \(2, 25\)"):
        L.load_t1_priors(tmp_path)
    means, stds = L.load_t1_priors()
    assert means.shape == stds.shape == (2, 25)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared SynthSeg files not on this machine")
def test_embedded_tables_match_shared_files():
    table = L.read_labels_table(SHARED / "labels_table.txt")
    assert table == {0: "background", **L.BRAIN_EVAL_LABELS}
    means, stds = L.load_t1_priors(SHARED)
    np.testing.assert_allclose(means, L.T1_PRIOR_MEANS, atol=1e-4)
    np.testing.assert_allclose(stds, L.T1_PRIOR_STDS, atol=1e-4)
    assert set(np.load(SHARED / "generation_labels.npy").tolist()) == set(L.T1_PRIOR_CLASS)


def _maps(folder: Path, ids) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        (folder / f"training_seg_{i:02d}.nii.gz").write_bytes(b"")
    return folder


def test_split_never_trains_on_held_out_maps(tmp_path):
    items = S.list_label_maps(_maps(tmp_path / "maps", range(20, 0, -1)))
    assert [i["id"] for i in items][:3] == ["seg_01", "seg_02", "seg_03"]
    splits = S.split_label_maps(items)
    ids = {k: [S.label_map_id(i["id"]) for i in v] for k, v in splits.items()}
    assert ids == {"training": list(range(1, 17)), "validation": [17, 18], "test": [19, 20]}
    assert not S.HELD_OUT_IDS & set(ids["training"])


@pytest.mark.parametrize(
    "item",
    [
        {"id": "seg_17", "label": "x"},
        {"id": "a", "label": "/data/labels_1mm/seg_20.nii.gz"},
        {"moving_label": "m", "fixed_label": "f", "moving_id": "seg_03", "fixed_id": "seg_19"},
        {"id": "b", "label": "/maps/training_seg_18.nii.gz"},
    ],
)
def test_check_no_held_out_refuses(item):
    with pytest.raises(ValueError, match="held-out label map"):
        S.check_no_held_out([{"id": "seg_01", "label": "ok"}, item])


def test_list_label_maps_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        S.list_label_maps(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        S.list_label_maps(_maps(tmp_path / "empty", []))
    with pytest.raises(ValueError, match="cannot read a map number"):
        S.label_map_id("brain.nii.gz")


@pytest.mark.parametrize(
    "array, match",
    [(np.zeros((8, 8, 8), np.float32), "empty"), (np.full((8, 8, 8), 2.5, np.float32), "not a label map")],
)
def test_align_label_map_bad_inputs(tmp_path, array, match):
    path = tmp_path / "training_seg_05.nii.gz"
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    with pytest.raises(ImageReadError, match=match):
        S.align_label_map(path, tmp_path / "template.nii.gz", tmp_path / "out")


def test_align_label_map_corrupt_file(tmp_path):
    path = tmp_path / "training_seg_05.nii.gz"
    path.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ImageReadError, match="training_seg_05.nii.gz: not a readable NIfTI"):
        S.align_label_map(path, tmp_path / "template.nii.gz", tmp_path / "out")


def test_synthesize_pair_deterministic_and_consistent():
    from tests.data.test_brain_synth import tiny_label_map

    lab = tiny_label_map(32)
    kw = {"deform_kwargs": {"stride": 8}}
    a = S.synthesize_pair(lab, lab[::-1].copy(), seed=3, **kw)
    b = S.synthesize_pair(lab, lab[::-1].copy(), seed=3, **kw)
    c = S.synthesize_pair(lab, lab[::-1].copy(), seed=4, **kw)
    for k in a:
        assert np.array_equal(a[k], b[k])
    assert not np.array_equal(a["moving_image"], c["moving_image"])
    assert a["moving_image"].dtype == np.float32 and 0 <= a["moving_image"].min() and a["moving_image"].max() <= 1
    assert set(np.unique(a["moving_label"])) <= set(L.BRAIN_EVAL_CODES) | {0}
    assert (a["moving_image"][a["moving_label"] == 0] == 0).all()
    half = S.downsample_pair(a)
    assert half["fixed_label"].shape == (16, 16, 16) and half["fixed_label"].dtype == a["fixed_label"].dtype


def test_write_unit_image_round_trip(tmp_path):
    img = np.random.rand(4, 5, 6).astype(np.float32)
    path = S.write_unit_image(img, np.eye(4), tmp_path / "x.nii.gz")
    back = np.asanyarray(nib.load(str(path)).dataobj)
    assert np.abs(back - img).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match=r"\[0, 1\] \(.*x2.nii.gz\)"):
        S.write_unit_image(img + 1, np.eye(4), tmp_path / "x2.nii.gz")


def test_training_and_evaluation_pipelines_from_files(tmp_path):
    from tests.data.test_brain_synth import tiny_label_map

    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    lab = tiny_label_map(32).astype(np.uint16)
    for name, arr in (("m", lab), ("f", lab[::-1].copy())):
        nib.save(nib.Nifti1Image(arr, aff), str(tmp_path / f"{name}.nii.gz"))
    entry = {"moving_label": str(tmp_path / "m.nii.gz"), "fixed_label": str(tmp_path / "f.nii.gz")}
    train = S.training_transforms(spacing=2.0, roi_size=(16, 16, 16), deform_kwargs={"stride": 16})
    train.set_random_state(0)
    out = train(dict(entry))
    assert out["image"].shape == (2, 16, 16, 16) and out["moving_label"].shape == (1, 16, 16, 16)
    assert int(out["fixed_label"].max()) <= len(L.BRAIN_EVAL_CODES)
    pair = S.synthesize_pair(lab, lab, seed=0, spacing=2.0, deform_kwargs={"stride": 16})
    for key, arr in pair.items():
        path = tmp_path / f"{key}.nii.gz"
        if key.endswith("image"):
            S.write_unit_image(arr, aff, path)
        else:
            nib.save(nib.Nifti1Image(arr, aff), str(path))
    ev = S.evaluation_transforms()({k: str(tmp_path / f"{k}.nii.gz") for k in pair})
    assert ev["image"].shape == (2, 32, 32, 32) and float(ev["image"].max()) <= 1.0
    assert set(np.unique(ev["moving_label"].numpy()).astype(int)) <= set(range(33))
    assert np.allclose(ev["moving_image"][0].numpy(), pair["moving_image"], atol=0.5 / 255 + 1e-6)
