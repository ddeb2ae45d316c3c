"""Dataset preparation (scripts/prepare_data.py) answers bad inputs with one line naming the file, exit code 2."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prepare_data.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def _label_dir(tmp: Path, case: str) -> Path:
    d = tmp / case
    d.mkdir()
    if case == "not_gzip":
        (d / "training_seg_01.nii.gz").write_bytes(b"not an image at all")
    elif case == "gzip_garbage":
        (d / "training_seg_01.nii.gz").write_bytes(gzip.compress(b"\x00" * 300))
    elif case == "four_d":
        nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 2), np.int16), np.eye(4)), d / "training_seg_01.nii.gz")
    return d


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing", "folder not found"),
        ("empty", "no file matches"),
        ("not_gzip", "not a readable NIfTI"),
        ("gzip_garbage", "not a readable NIfTI"),
        ("four_d", "3D"),
    ],
)
def test_brain_bad_label_folder(case, fragment, tmp_path):
    label_dir = tmp_path / case if case == "missing" else _label_dir(tmp_path, case)
    res = _run("brain", "--label_dir", str(label_dir), "--out_dir", str(tmp_path / "out"))
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and fragment in last, last
    assert "Traceback" not in res.stderr
    named = str(label_dir) if case in ("missing", "empty") else "training_seg_01.nii.gz"
    assert named in last, last


def test_brain_changed_settings_in_an_existing_output_are_refused(tmp_path):
    out = tmp_path / "out"
    (out / "brain").mkdir(parents=True)
    cfg = {"n_pairs": 4, "contrast": "t1", "template": "deepmriprep", "align": "labels-to-atlas-mattes",
           "heldout_misalign": False}  # fmt: skip
    (out / "brain" / "prepare_config.json").write_text(json.dumps(cfg))
    res = _run("brain", "--out_dir", str(out), "--n_pairs", "6", "--label_dir", str(tmp_path))
    assert res.returncode != 0
    assert "prepare_config.json" in res.stderr and "n_pairs" in res.stderr, res.stderr[-2000:]
    assert json.loads((out / "brain" / "prepare_config.json").read_text()) == cfg  # untouched


def test_oasis_and_acdc_missing_folders(tmp_path):
    res = _run("oasis_real", "--t1_dir", str(tmp_path / "none"), "--out_dir", str(tmp_path / "o"))
    assert res.returncode == 2 and "folder not found" in res.stderr and str(tmp_path / "none") in res.stderr
    res = _run("cardiac", "--acdc_root", str(tmp_path / "acdc"), "--out_dir", str(tmp_path / "c"))
    assert res.returncode == 2 and str(tmp_path / "acdc") in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "c" / "datalist.json").exists()


def test_acdc_patient_with_a_corrupt_frame_is_named(tmp_path):
    for n in range(1, 7):
        p = tmp_path / "acdc" / "training" / f"patient{n:03d}"
        p.mkdir(parents=True)
        (p / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: NOR\nHeight: 180\nNbFrame: 30\nWeight: 80\n")
        for f in (f"patient{n:03d}_frame01", f"patient{n:03d}_frame12"):
            (p / f"{f}.nii.gz").write_bytes(b"broken")
            (p / f"{f}_gt.nii.gz").write_bytes(b"broken")
    res = _run("cardiac", "--acdc_root", str(tmp_path / "acdc"), "--out_dir", str(tmp_path / "c"))
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert "_frame" in last and "not a readable NIfTI" in last, res.stderr[-2000:]
    assert not (tmp_path / "c" / "datalist.json").exists()
