"""Writing the phantom data set: layout, datalist, split separation, resume, MONAI loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImaged

from common.data.cardiac import PAIR_KEYS, phantom_subject, prepare_phantom_dataset
from common.io.nifti import read_nifti


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    prepare_phantom_dataset(out, n_train=3, n_val=2, n_test=2, progress=False)
    return out


def test_layout_and_datalist(prepared: Path) -> None:
    datalist = json.loads((prepared / "datalist.json").read_text())
    assert {k: len(v) for k, v in datalist.items()} == {"training": 6, "validation": 4, "test": 4}
    for entry in datalist["training"]:
        assert set(entry) == set(PAIR_KEYS)
    entry = datalist["test"][1]
    assert entry["id"] == "phantom_test0000_ES-ED"
    assert entry["moving_image"] == "subjects/phantom_test0000/phantom_test0000_ES.nii.gz"
    assert entry["fixed_label"] == "subjects/phantom_test0000/phantom_test0000_ED_gt.nii.gz"
    img, affine = read_nifti(prepared / entry["moving_image"], ndim=2)
    lab, _ = read_nifti(prepared / entry["moving_label"], ndim=2, dtype=None)
    assert img.shape == lab.shape == (112, 112) and 0 <= img.min() and img.max() <= 1
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1, 2, 3}
    np.testing.assert_allclose(np.diag(affine)[:2], [1.5, 1.5])
    params = json.loads((prepared / "subjects" / "phantom_test0000.json").read_text())
    assert params["size"] == [112, 112]


def test_splits_do_not_overlap(prepared: Path) -> None:
    datalist = json.loads((prepared / "datalist.json").read_text())
    subjects = {k: {e["id"].rsplit("_", 1)[0] for e in v} for k, v in datalist.items()}
    assert not subjects["training"] & subjects["test"] and not subjects["training"] & subjects["validation"]
    images = {k: [read_nifti(prepared / e["moving_image"], ndim=2)[0] for e in v[::2]] for k, v in datalist.items()}
    for a in images["training"]:
        assert not any(np.array_equal(a, b) for b in images["test"] + images["validation"])
    # the same index in different splits gives different subjects
    assert phantom_subject("training", 0)[1] != phantom_subject("test", 0)[1]


def test_monai_loads_the_datalist(prepared: Path) -> None:
    items = load_decathlon_datalist(prepared / "datalist.json", data_list_key="validation", base_dir=prepared)
    data = LoadImaged(keys=list(PAIR_KEYS[:4]), ensure_channel_first=True)(items[0])
    assert data["moving_image"].shape == (1, 112, 112)


def test_resume_skips_finished(prepared: Path) -> None:
    target = prepared / "subjects" / "phantom_train0001" / "phantom_train0001_ED.nii.gz"
    other = prepared / "subjects" / "phantom_train0000" / "phantom_train0000_ED.nii.gz"
    before = target.read_bytes()
    stamp = other.stat().st_mtime_ns
    (prepared / "subjects" / "phantom_train0001.json").unlink()  # as if interrupted before the marker
    target.unlink()
    prepare_phantom_dataset(prepared, n_train=4, n_val=2, n_test=2, progress=False)
    assert target.read_bytes() == before  # re-rendered identically
    assert other.stat().st_mtime_ns == stamp  # finished subjects untouched
    datalist = json.loads((prepared / "datalist.json").read_text())
    assert len(datalist["training"]) == 8 and not list(prepared.rglob(".*.nii.gz"))  # no temp files left


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": 1}, "prepare_config.json was written with other settings"),
        ({"n_train": -1}, "subject counts must be >= 0"),
        ({"directions": ["ED->XX"]}, "directions must be a non-empty subset"),
    ],
)
def test_bad_prepare(prepared: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prepare_phantom_dataset(prepared, **{"n_train": 1, "n_val": 0, "n_test": 0, "progress": False, **kwargs})


def test_bad_split_name() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        phantom_subject("train", 0)
