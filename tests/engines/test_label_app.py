"""MONAI Label app helpers that need no MONAI Label: Slicer segment values, upload checks, output pruning."""

from __future__ import annotations

import os
import time

import nibabel as nib
import numpy as np
import pytest

from common.data.brain.labels import BRAIN_EVAL_LABELS
from common.engines.label_app import (
    check_image_upload,
    check_label_upload,
    prune_outputs,
    result_folder_name,
    slicer_label_names,
    slicer_segments,
    to_slicer_values,
)
from common.io.nifti import ImageReadError


def test_slicer_mapping_of_the_published_labels_names_every_structure_right():
    """Replaying Slicer's import (value i+1 = i-th published name) gives each name its own FreeSurfer structure."""
    rng = np.random.default_rng(0)
    codes = np.array([0, *BRAIN_EVAL_LABELS])
    fs = codes[rng.integers(0, len(codes), size=(12, 10, 8))]
    fs[0, 0, 0], fs[0, 0, 1] = 41, 60  # right hemisphere present
    names = slicer_label_names()
    assert sorted(names.values()) == list(range(1, 33))
    segments = slicer_segments(to_slicer_values(fs), names)
    assert len(segments) == 32
    for code, name in BRAIN_EVAL_LABELS.items():
        assert np.array_equal(segments[name], fs == code), name
    # FreeSurfer codes as values (what the app returned before) give almost no name its own structure
    broken = slicer_segments(fs, {name: code for code, name in BRAIN_EVAL_LABELS.items()})
    right = sum(np.array_equal(broken[name], fs == code) for code, name in BRAIN_EVAL_LABELS.items())
    assert right <= 1, right


def test_slicer_segments_drops_background_and_accepts_a_list():
    segs = slicer_segments(np.array([0, 1, 2, 2]), ["background", "a", "b"])
    assert list(segs) == ["a", "b"] and segs["b"].sum() == 2


def _save(path, arr, affine=None):
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), path)
    return path


def test_upload_checks_name_the_file_and_the_problem(tmp_path):
    good = _save(tmp_path / "t1.nii.gz", np.random.default_rng(0).random((16, 16, 16)).astype(np.float32))
    assert check_image_upload(good)[0] == (16, 16, 16)
    junk = tmp_path / "tmpabc.nii.gz"
    junk.write_bytes(b"\x1f\x8b\x08\x00 definitely not a volume")
    with pytest.raises(ImageReadError, match=r"^scan\.nii\.gz: not a readable NIfTI") as err:
        check_image_upload(junk, name="scan.nii.gz")
    assert "tmpabc" not in str(err.value)
    with pytest.raises(ImageReadError, match="flat.nii.gz: the image is constant"):
        check_image_upload(_save(tmp_path / "flat.nii.gz", np.zeros((16, 16, 16), np.float32)))
    with pytest.raises(ImageReadError, match="expected a 3D image"):
        check_image_upload(_save(tmp_path / "d2.nii.gz", np.ones((16, 16), np.float32)))
    with pytest.raises(ImageReadError, match="8 voxels"):
        check_image_upload(_save(tmp_path / "thin.nii.gz", np.arange(64, dtype=np.float32).reshape(16, 2, 2)))


def test_label_upload_must_be_an_integer_map_on_the_image_grid(tmp_path):
    image = _save(tmp_path / "t1.nii.gz", np.random.default_rng(0).random((16, 16, 16)).astype(np.float32))
    ok = _save(tmp_path / "l.nii.gz", np.ones((16, 16, 16), np.int16))
    check_label_upload(ok, image)
    with pytest.raises(ImageReadError, match="shape"):
        check_label_upload(_save(tmp_path / "s.nii.gz", np.ones((16, 16, 15), np.int16)), image)
    shifted = np.eye(4)
    shifted[0, 3] = 5
    with pytest.raises(ImageReadError, match="affine"):
        check_label_upload(_save(tmp_path / "a.nii.gz", np.ones((16, 16, 16), np.int16), shifted), image)
    with pytest.raises(ImageReadError, match="non-integer"):
        check_label_upload(_save(tmp_path / "f.nii.gz", np.full((16, 16, 16), 1.5, np.float32)), image)


def test_prune_outputs_removes_the_oldest_finished_results_until_under_the_cap(tmp_path):
    folders = []
    for i in range(5):
        d = tmp_path / "model" / f"img{i}"
        d.mkdir(parents=True)
        (d / "f.bin").write_bytes(b"x" * 1000)
        (d / ("atlas.json" if i % 2 else "registration.json")).write_text("{}")
        os.utime(d, (time.time() - 100 + i, time.time() - 100 + i))
        folders.append(d)
    other = tmp_path / "labels" / "final"  # not a result (no record): never touched
    other.mkdir(parents=True)
    (other / "l.nii.gz").write_bytes(b"y" * 5000)
    os.utime(other, (time.time() - 1000, time.time() - 1000))
    busy = {str(folders[1].resolve())}  # its transform is still being written
    removed = prune_outputs(tmp_path, max_bytes=3100, keep=folders[0], busy=busy)  # 5 x 1002 bytes
    assert removed == [folders[2], folders[3]]
    assert folders[0].exists() and folders[1].exists() and folders[4].exists() and other.exists()
    assert prune_outputs(tmp_path, max_bytes=10**6) == []
    assert prune_outputs(tmp_path / "absent", max_bytes=0) == []


def test_result_folder_names_differ_for_different_ids_and_stay_inside_the_root():
    ids = ["moved_atlas", "OAS1_0001_MR1.brain", "OAS1_0001_MR1.orig", "3: T1 MPRAGE", "3_ T1_MPRAGE", "..", ".",
           "", "a/../../b", "1.2.840.10008.5.1.4.nii.gz"]  # fmt: skip
    names = [result_folder_name(i) for i in ids]
    assert len(set(names)) == len(names), names
    assert names[0] == "moved_atlas" and names[-1] == "1.2.840.10008.5.1.4"
    assert all("/" not in n and not n.startswith(".") and n for n in names)


def test_label_uploads_must_use_the_app_values(tmp_path):
    image = _save(tmp_path / "t1.nii.gz", np.random.default_rng(0).random((16, 16, 16)).astype(np.float32))
    fs = np.zeros((16, 16, 16), np.int16)
    fs[2:5, 2:5, 2:5] = 41  # a FreeSurfer code (right cerebral white matter)
    with pytest.raises(ImageReadError, match="values up to 41.*1..32"):
        check_label_upload(_save(tmp_path / "fs.nii.gz", fs), image)
