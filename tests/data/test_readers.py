"""Dataset readers on tiny look-alike trees (files are empty placeholders: readers only list and check paths)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data import readers as R


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def l2r_oasis_tree(root: Path, val_key: str = "registration_val") -> Path:
    training = []
    for i in (1, 2, 3, 4):
        image, label = f"./imagesTr/OASIS_{i:04d}_0000.nii.gz", f"./labelsTr/OASIS_{i:04d}_0000.nii.gz"
        touch(root / image), touch(root / label), touch(root / f"masksTr/OASIS_{i:04d}_0000.nii.gz")
        training.append({"image": image, "label": label, "mask": f"./masksTr/OASIS_{i:04d}_0000.nii.gz"})
    data = {
        "name": "OASIS",
        "tensorImageShape": {"0": [160, 224, 192]},
        "numTraining": 4,
        "training": training,
        val_key: [
            {"fixed": "./imagesTr/OASIS_0004_0000.nii.gz", "moving": "./imagesTr/OASIS_0003_0000.nii.gz"},
            {"fixed": "./imagesTr/OASIS_0003_0000.nii.gz", "moving": "./imagesTr/OASIS_0002_0000.nii.gz"},
        ],
    }
    (root / "OASIS_dataset.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("val_key", ["registration_val", "validation"])
def test_read_l2r_oasis(tmp_path, val_key):
    out = R.read_l2r_oasis(l2r_oasis_tree(tmp_path, val_key))
    assert [t["id"] for t in out["training"]] == [f"OASIS_{i:04d}_0000" for i in (1, 2, 3, 4)]
    assert all(Path(t["label"]).parent.name == "labelsTr" for t in out["training"])
    pair = out["validation"][0]
    assert pair["moving_id"] == "OASIS_0003_0000" and pair["fixed_id"] == "OASIS_0004_0000"
    assert pair["moving_label"].endswith("labelsTr/OASIS_0003_0000.nii.gz") and Path(pair["fixed_image"]).is_file()
    assert out["test"] == []


def test_read_l2r_oasis_val_images_outside_training_get_labels_from_labels_folder(tmp_path):
    root = l2r_oasis_tree(tmp_path)
    data = json.loads((root / "OASIS_dataset.json").read_text())
    data["training"] = data["training"][:2]  # 3 and 4 only appear in the pairs
    (root / "OASIS_dataset.json").write_text(json.dumps(data))
    pair = R.read_l2r_oasis(root)["validation"][0]
    assert pair["moving_label"].endswith("labelsTr/OASIS_0003_0000.nii.gz")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.pop("training"), "missing key 'training'"),
        (lambda d: d.update(training={"image": "x"}), "'training' must be a list"),
        (lambda d: d["training"].append({"label": "only"}), r"training\[4\] must be an object with string fields"),
        (lambda d: d["training"].append({"image": "./imagesTr/gone.nii.gz"}), "gone.nii.gz: image of OASIS_dataset"),
        (lambda d: d["registration_val"].append({"fixed": "./imagesTr/OASIS_0001_0000.nii.gz"}), "registration_val"),
    ],
)
def test_read_l2r_oasis_bad_json(tmp_path, mutate, match):
    root = l2r_oasis_tree(tmp_path)
    data = json.loads((root / "OASIS_dataset.json").read_text())
    mutate(data)
    (root / "OASIS_dataset.json").write_text(json.dumps(data))
    with pytest.raises(R.DatasetLayoutError, match=match):
        R.read_l2r_oasis(root)


def test_read_l2r_oasis_missing_or_broken_json(tmp_path):
    with pytest.raises(R.DatasetLayoutError, match="OASIS_dataset.json: dataset JSON not found"):
        R.read_l2r_oasis(tmp_path)
    (tmp_path / "OASIS_dataset.json").write_text("{not json")
    with pytest.raises(R.DatasetLayoutError, match="OASIS_dataset.json: not valid JSON"):
        R.read_l2r_oasis(tmp_path)
    (tmp_path / "OASIS_dataset.json").write_text("[1, 2]")
    with pytest.raises(R.DatasetLayoutError, match="expected a JSON object"):
        R.read_l2r_oasis(tmp_path)


def test_read_neurite_oasis(tmp_path):
    for sid in ("0001", "0002"):
        folder = tmp_path / f"OASIS_OAS1_{sid}_MR1"
        (
            touch(folder / "aligned_norm.nii.gz"),
            touch(folder / "aligned_seg35.nii.gz"),
            touch(folder / "slice_norm.nii.gz"),
        )
    touch(tmp_path / "subjects.txt")
    items = R.read_neurite_oasis(tmp_path)
    assert [i["id"] for i in items] == ["OAS1_0001_MR1", "OAS1_0002_MR1"]
    assert items[0]["label"].endswith("OASIS_OAS1_0001_MR1/aligned_seg35.nii.gz")
    (tmp_path / "OASIS_OAS1_0002_MR1" / "aligned_seg35.nii.gz").unlink()
    assert "label" not in R.read_neurite_oasis(tmp_path, label_name=None)[1]
    with pytest.raises(R.DatasetLayoutError, match="OASIS_OAS1_0002_MR1/aligned_seg35.nii.gz: label map not found"):
        R.read_neurite_oasis(tmp_path)
    with pytest.raises(R.DatasetLayoutError, match="no subject folder"):
        R.read_neurite_oasis(tmp_path / "OASIS_OAS1_0001_MR1")


def test_read_lumir(tmp_path):
    training = [{"image": f"./imagesTr/LUMIRMRI_{i:04d}_0000.nii.gz"} for i in range(3)]
    validation = [{"fixed": "./imagesVal/LUMIRMRI_3455_0000.nii.gz", "moving": "./imagesVal/LUMIRMRI_3454_0000.nii.gz"}]
    for e in training:
        touch(tmp_path / e["image"])
    touch(tmp_path / validation[0]["fixed"]), touch(tmp_path / validation[0]["moving"])
    (tmp_path / "LUMIR_dataset.json").write_text(json.dumps({"training": training, "validation": validation}))
    out = R.read_lumir(tmp_path)
    assert len(out["training"]) == 3 and "label" not in out["training"][0]
    assert out["validation"][0]["id"] == "LUMIRMRI_3454_0000_to_LUMIRMRI_3455_0000"
    assert "moving_label" not in out["validation"][0]
    (tmp_path / validation[0]["fixed"]).unlink()
    with pytest.raises(R.DatasetLayoutError, match="LUMIRMRI_3455_0000.nii.gz: image not found"):
        R.read_lumir(tmp_path)


def test_read_image_label_folder_lpba_and_ixi_styles(tmp_path):
    for s in ("S01", "S02"):  # LPBA40-like
        touch(tmp_path / "lpba" / f"{s}.native.mri.nii.gz")
        touch(tmp_path / "lpba" / f"{s}.native.label.nii.gz")
    items = R.read_image_label_folder(tmp_path / "lpba", "*.mri.nii.gz", label_template="{id}.native.label.nii.gz",
                                      id_regex=r"^(S\d+)\.")  # fmt: skip
    assert [(i["id"], Path(i["label"]).name) for i in items] == [
        ("S01", "S01.native.label.nii.gz"),
        ("S02", "S02.native.label.nii.gz"),
    ]
    touch(tmp_path / "ixi" / "IXI002-Guys-0828-T1.nii.gz")  # IXI: images only
    assert R.read_image_label_folder(tmp_path / "ixi", "*-T1.nii.gz", id_regex=r"^(IXI\d+)")[0]["id"] == "IXI002"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_glob": "*.mgz"}, "no image matches"),
        ({"label_template": "{id}_seg.nii.gz"}, "sub-2_seg.nii.gz: label map for subject 'sub-2' not found"),
        ({"id_regex": r"^(x\d)"}, "does not match id_regex"),
        ({"id_regex": r"^(sub)"}, "appears twice"),
        ({"label_template": "{id}.nii.gz"}, "gives the image itself"),
    ],
)
def test_read_image_label_folder_errors(tmp_path, kwargs, match):
    touch(tmp_path / "sub-1.nii.gz"), touch(tmp_path / "sub-2.nii.gz"), touch(tmp_path / "sub-1_seg.nii.gz")
    kwargs = {"image_glob": "sub-?.nii.gz", **kwargs}
    with pytest.raises(R.DatasetLayoutError, match=match):
        R.read_image_label_folder(tmp_path, **kwargs)


def test_read_datalist(tmp_path):
    touch(tmp_path / "labels_1mm/seg_01.nii.gz"), touch(tmp_path / "labels_1mm/seg_02.nii.gz")
    entry = {
        "id": "seg_01_to_seg_02",
        "moving_label": "labels_1mm/seg_01.nii.gz",
        "fixed_label": "labels_1mm/seg_02.nii.gz",
    }
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [entry], "validation": []}))
    out = R.read_datalist(tmp_path / "datalist.json")
    assert Path(out[0]["moving_label"]).is_absolute() and out[0]["id"] == entry["id"]
    with pytest.raises(R.DatasetLayoutError, match="missing key 'test'"):
        R.read_datalist(tmp_path / "datalist.json", "test")
    (tmp_path / "labels_1mm/seg_02.nii.gz").unlink()
    with pytest.raises(R.DatasetLayoutError, match=r"seg_02.nii.gz: training\[0\].fixed_label of datalist.json"):
        R.read_datalist(tmp_path / "datalist.json")
