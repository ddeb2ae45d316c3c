"""A released bundle runs with only its own folder and public packages: no clone, no `pip install` of this project.

The release zip carries the ``common`` package (``scripts/release.py``); MONAI puts the bundle folder on
``sys.path`` when it runs the workflow. The subprocess below removes this repository from ``sys.path`` and drops
the editable-install finder of ``pip install -e .``, so ``import common`` can only find the copy in the bundle;
it runs ``python -m monai.bundle run`` from an unrelated folder and the field must equal the in-repository run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
from scripts.release import package, runtime_requirements  # noqa: E402

NAME = "brain_mri_hybrid_loss"

# run monai.bundle with this repository invisible: no repo root on sys.path, no editable-install finder
BOOTSTRAP = """
import os, runpy, sys
repo = os.path.realpath(sys.argv[1])
sys.meta_path[:] = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != repo]
sys.argv = ["monai.bundle", *sys.argv[2:]]
try:
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
finally:
    mod = sys.modules.get("common")
    print("COMMON_FROM", getattr(mod, "__file__", None))
"""


def _blob(shape, shift):
    g = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    c = np.array(shape, dtype=np.float32)[:, None, None, None] / 2 + shift
    return np.exp(-((g - c) ** 2).sum(0) / 60.0).astype(np.float32)


@pytest.mark.parametrize("pair", ["blobs", pytest.param("demo", marks=pytest.mark.slow)])
def test_released_bundle_runs_without_the_repository_and_gives_the_same_field(pair, tmp_path):
    """``blobs``: a small synthetic pair (default suite); ``demo``: the shipped real OASIS-1 pair at 1 mm."""
    www = tmp_path / "www"
    entry = package(NAME, www, "http://127.0.0.1:1")
    zpath = www / Path(entry["source"]).name
    with zipfile.ZipFile(zpath) as zf:
        names = zf.namelist()
        assert f"{NAME}/common/__init__.py" in names and f"{NAME}/common/engines/inference.py" in names
        assert not [n for n in names if "__pycache__" in n or n.startswith(f"{NAME}/models/")]
        meta = json.loads(zf.read(f"{NAME}/configs/metadata.json"))
        zf.extractall(tmp_path / "user")
    reqs = meta["required_packages_version"]
    assert "monai-registration-zoo" not in reqs and reqs == {**reqs, **runtime_requirements()}
    assert {"nibabel", "itk", "pytorch-ignite"} <= set(reqs)
    bundle = tmp_path / "user" / NAME
    (bundle / "models").mkdir()
    shutil.copyfile(www / Path(entry["weights_url"]).name, bundle / "models" / "model.pt")

    aff = np.diag([1.5, 1.5, 1.5, 1.0])
    shape = (40, 48, 40)
    moving, fixed = tmp_path / "m.nii.gz", tmp_path / "f.nii.gz"
    if pair == "demo":
        shutil.copyfile(ROOT / "data" / "demo" / "moving_t1.nii.gz", moving)
        shutil.copyfile(ROOT / "data" / "demo" / "fixed_t1.nii.gz", fixed)
        shape = nib.load(fixed).shape
    else:
        nib.save(nib.Nifti1Image(_blob(shape, 1.5), aff), moving)
        nib.save(nib.Nifti1Image(_blob(shape, 0.0), aff), fixed)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    fields = {}
    for where, b in (("release", bundle), ("repo", ROOT / "bundles" / NAME)):
        out = tmp_path / f"out_{where}"
        args = ["run", "--config_file", str(b / "configs" / "inference.json"), "--bundle_root", str(b),
                "--moving", str(moving), "--fixed", str(fixed), "--output_dir", str(out)]  # fmt: skip
        if where == "release":
            cmd = [sys.executable, "-c", BOOTSTRAP, str(ROOT), *args]
        else:
            cmd = [sys.executable, "-m", "monai.bundle", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if where == "release":  # the code that ran is the bundle's own copy
            line = [x for x in proc.stdout.splitlines() if x.startswith("COMMON_FROM")][-1]
            assert line.split(" ", 1)[1].startswith(str(bundle / "common")), line
        fields[where] = np.asarray(nib.load(out / "m_to_f" / "disp.nii.gz").dataobj, dtype=np.float32)
    assert fields["release"].shape == (*shape, 3)
    diff = float(np.abs(fields["release"] - fields["repo"]).max())
    print(f"{pair}: max |field(release) - field(repo)| = {diff:.3g} voxels")
    assert diff <= 1e-4
    assert np.abs(fields["repo"]).max() > 0.01  # a real field, not two zeros
