"""Distributed batch inference: ``multi_gpu_inference.json`` under torchrun (2 gloo processes on CPU).

Each rank registers its shard of the datalist (MONAI ``DistributedSampler``, no padding), every pair is written
exactly once, the ranks merge their rows into one ``summary.csv`` (under a file lock), and the fields equal a
single-process run's.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p.parent.parent for p in (ROOT / "bundles").glob("*/configs/multi_gpu_inference.json"))


def test_every_bundle_has_the_override():
    assert {b.name for b in BUNDLES} == {
        p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "inference.json").is_file()
    }


def _pairs(tmp: Path, n: int) -> Path:
    shape = (24, 28, 20)
    g = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    entries = []
    for i in range(n):
        for role, shift in (("moving", 1.0 + 0.3 * i), ("fixed", 0.0)):
            c = np.array(shape, dtype=np.float32)[:, None, None, None] / 2 + shift
            img = np.exp(-((g - c) ** 2).sum(0) / 30.0).astype(np.float32)
            nib.save(nib.Nifti1Image(img, np.diag([1.5, 1.5, 1.5, 1.0])), tmp / f"{role}_{i}.nii.gz")
        entries.append({"id": f"pair_{i}", "moving_image": f"moving_{i}.nii.gz", "fixed_image": f"fixed_{i}.nii.gz"})
    (tmp / "pairs.json").write_text(json.dumps({"test": entries}))
    return tmp / "pairs.json"


@pytest.mark.parametrize("bundle", [b for b in BUNDLES if b.name == "brain_mri_hybrid_loss"], ids=lambda p: p.name)
def test_two_processes_register_each_pair_once_with_one_summary(bundle, tmp_path):
    datalist = _pairs(tmp_path, 3)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    common = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf",
              "--datalist", str(datalist)]  # fmt: skip
    dist_out, single_out = tmp_path / "dist", tmp_path / "single"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "monai.bundle", "run", "--config_file",
           "['configs/inference.json','configs/multi_gpu_inference.json']", *common, "--output_dir", str(dist_out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", *common,
           "--output_dir", str(single_out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(dist_out / "summary.csv")))
    assert sorted(r["name"] for r in rows) == ["pair_0", "pair_1", "pair_2"]
    for i in range(3):
        a = np.asarray(nib.load(dist_out / f"pair_{i}" / "disp.nii.gz").dataobj, dtype=np.float32)
        b = np.asarray(nib.load(single_out / f"pair_{i}" / "disp.nii.gz").dataobj, dtype=np.float32)
        assert np.abs(a - b).max() <= 1e-5
    assert not [p for p in dist_out.iterdir() if ".partial-" in p.name]
