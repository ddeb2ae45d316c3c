"""scripts/prepare_data.py lumir: datalist of a LUMIR look-alike tree (tiny real NIfTIs), loading, pairing, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.datalist import load_datalist
from common.data.pairs import random_pairs
from common.data.readers import DatasetLayoutError

ROOT = Path(__file__).resolve().parents[2]
TRAIN_IDS = ("0000", "0001", "0002", "0003")
VAL_PAIRS = (("3454", "3455"), ("3456", "3457"))  # (moving, fixed)


def _prepare():
    from scripts import prepare_data

    return prepare_data


PREP = _prepare()


def _image(path: Path, value: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((4, 5, 3), value, np.float32), np.eye(4)), str(path))


def lumir_tree(root: Path, n_val: int = 2, with_validation: bool = True) -> Path:
    """LUMIR layout: LUMIR_dataset.json, imagesTr/LUMIRMRI_XXXX_0000.nii.gz, imagesVal/ pairs (fixed/moving)."""
    training = []
    for k, sid in enumerate(TRAIN_IDS):
        rel = f"./imagesTr/LUMIRMRI_{sid}_0000.nii.gz"
        _image(root / rel, k)
        training.append({"image": rel})
    validation = []
    for mid, fid in VAL_PAIRS[:n_val]:
        for sid in (mid, fid):
            _image(root / f"imagesVal/LUMIRMRI_{sid}_0000.nii.gz", float(sid))
        validation.append(
            {"fixed": f"./imagesVal/LUMIRMRI_{fid}_0000.nii.gz", "moving": f"./imagesVal/LUMIRMRI_{mid}_0000.nii.gz"}
        )
    data = {"name": "LUMIR", "numTraining": len(training), "training": training}
    if with_validation:
        data["validation"] = validation
    (root / "LUMIR_dataset.json").write_text(json.dumps(data))
    return root


def test_lumir_datalist_layout_and_pairs(tmp_path):
    root = lumir_tree(tmp_path / "LUMIR")
    summary = PREP.lumir(str(root), out_dir=str(tmp_path / "prepared"))
    path = tmp_path / "prepared" / "lumir" / "datalist.json"
    note = "no 'test' pairs in LUMIR_dataset.json: wrote an empty list"
    assert summary == {"datalist": str(path), "training_subjects": 4, "validation": 2, "test": 0, "notes": [note]}
    raw = json.loads(path.read_text())
    assert [s["id"] for s in raw["training_subjects"]] == list(TRAIN_IDS)
    assert all(set(s) == {"id", "image"} and os.path.isabs(s["image"]) for s in raw["training_subjects"])
    assert raw["validation"][0] == {
        "id": "3454_to_3455",
        "moving_id": "3454",
        "fixed_id": "3455",
        "moving_image": str((root / "imagesVal/LUMIRMRI_3454_0000.nii.gz").resolve()),
        "fixed_image": str((root / "imagesVal/LUMIRMRI_3455_0000.nii.gz").resolve()),
    }
    assert raw["test"] == []
    assert not [p.name for p in path.parent.iterdir() if p.name != "datalist.json"]  # no temp files left

    subjects = load_datalist(path, "training_subjects")
    pairs = random_pairs(subjects, 5, seed=0)
    assert len(pairs) == 5 and pairs == random_pairs(subjects, 5, seed=0)
    for pair in pairs:
        assert pair["moving_id"] != pair["fixed_id"]
        assert Path(pair["moving_image"]).is_file() and Path(pair["fixed_image"]).is_file()
        assert Path(pair["moving_image"]).name == f"LUMIRMRI_{pair['moving_id']}_0000.nii.gz"
        moving = nib.load(pair["moving_image"]).get_fdata()
        assert moving[0, 0, 0] == TRAIN_IDS.index(pair["moving_id"])  # the path leads to that subject's image
    val = load_datalist(path, "validation")
    assert [(v["moving_id"], v["fixed_id"]) for v in val] == list(VAL_PAIRS)
    assert all(Path(v["fixed_image"]).is_file() for v in val)


def test_lumir_without_validation_writes_empty_list_and_says_so(tmp_path):
    root = lumir_tree(tmp_path / "LUMIR", with_validation=False)
    summary = PREP.lumir(str(root), out_dir=str(tmp_path / "out"))
    assert summary["validation"] == 0 and summary["training_subjects"] == 4
    assert any("'validation'" in n for n in summary["notes"])
    assert json.loads(Path(summary["datalist"]).read_text())["validation"] == []


def test_lumir_rerun_rewrites_the_datalist(tmp_path):
    root = lumir_tree(tmp_path / "LUMIR", n_val=1)
    PREP.lumir(str(root), out_dir=str(tmp_path / "out"))
    data = json.loads((root / "LUMIR_dataset.json").read_text())
    data["training"] = data["training"][:2]
    (root / "LUMIR_dataset.json").write_text(json.dumps(data))
    assert PREP.lumir(str(root), out_dir=str(tmp_path / "out"))["training_subjects"] == 2


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("missing_root", FileNotFoundError, r"lumir: .*nowhere: LUMIR root folder not found"),
        ("missing_json", DatasetLayoutError, r"LUMIR_dataset.json: dataset JSON not found"),
        ("other_json_name", DatasetLayoutError, r"LUMIR_custom.json: dataset JSON not found"),
        ("missing_training_file", DatasetLayoutError, r"LUMIRMRI_0002_0000.nii.gz: image of LUMIR_dataset.json"),
        ("missing_val_file", DatasetLayoutError, r"LUMIRMRI_3455_0000.nii.gz: image not found"),
        ("duplicate_case_id", DatasetLayoutError, r"share case id '0001'"),
    ],
)
def test_lumir_errors_name_the_root_or_file(tmp_path, case, error, match):
    root = tmp_path / "LUMIR"
    kwargs = {}
    if case == "missing_root":
        root = tmp_path / "nowhere"
    else:
        lumir_tree(root)
    if case == "missing_json":
        (root / "LUMIR_dataset.json").unlink()
    elif case == "other_json_name":
        kwargs["json_name"] = "LUMIR_custom.json"
    elif case == "missing_training_file":
        (root / "imagesTr/LUMIRMRI_0002_0000.nii.gz").unlink()
    elif case == "missing_val_file":
        (root / "imagesVal/LUMIRMRI_3455_0000.nii.gz").unlink()
    elif case == "duplicate_case_id":
        _image(root / "imagesTr/LUMIRMRI_0001_0001.nii.gz", 9.0)  # a second scan of case 0001
        data = json.loads((root / "LUMIR_dataset.json").read_text())
        data["training"].append({"image": "./imagesTr/LUMIRMRI_0001_0001.nii.gz"})
        (root / "LUMIR_dataset.json").write_text(json.dumps(data))
    with pytest.raises(error, match=match):
        PREP.lumir(str(root), out_dir=str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out" / "lumir" / "datalist.json").exists()


def test_lumir_guarded_error_is_one_line(tmp_path, capsys):
    from common.__main__ import guarded

    with pytest.raises(SystemExit) as exc:
        guarded(PREP.lumir)(root=str(tmp_path / "gone"), out_dir=str(tmp_path / "out"))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: FileNotFoundError: lumir:") and str(tmp_path / "gone") in err[0]


def test_lumir_cli(tmp_path):
    """The command is registered with fire: one subprocess run on the look-alike tree."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    root = lumir_tree(tmp_path / "LUMIR", n_val=1)
    script = str(ROOT / "scripts" / "prepare_data.py")
    res = subprocess.run([sys.executable, script, "lumir", "--root", str(root), "--out_dir", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "training_subjects" in res.stdout and (tmp_path / "o" / "lumir" / "datalist.json").is_file()
