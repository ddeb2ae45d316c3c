"""Bad inputs through the public CLI (`python -m common register`): a clear one-line error naming the file and
the problem, exit code 2, and no partial output left behind. Good-but-unusual inputs must work."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = "brain_mri_hybrid_loss"
SHAPE = (20, 24, 18)


class Evil:
    """Any pickled object: weights_only loading must refuse it."""


def _save(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> str:
    nib.save(nib.Nifti1Image(arr, np.diag([1.5, 1.5, 1.5, 1.0]) if affine is None else affine), path)
    return str(path)


def _blob(shift: float = 0.0) -> np.ndarray:
    g = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")).astype(np.float32)
    c = np.array(SHAPE, dtype=np.float32)[:, None, None, None] / 2 + shift
    return np.exp(-((g - c) ** 2).sum(0) / 30.0).astype(np.float32)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "common", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )


def _register(moving: str, fixed: str, out: Path, ckpt: str, *extra: str) -> subprocess.CompletedProcess:
    return _cli(
        "register", "--bundle", BUNDLE, "--moving", moving, "--fixed", fixed, "--out", str(out), "--ckpt", ckpt, *extra
    )


def _no_outputs(out: Path) -> bool:
    return not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def _bad_files(tmp: Path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected message fragment)."""
    cases = {}
    (tmp / "not_nifti.nii.gz").write_bytes(b"this is not an image")
    cases["not a NIfTI"] = (str(tmp / "not_nifti.nii.gz"), "not a readable NIfTI")
    good = tmp / "good.nii.gz"
    _save(good, _blob())
    data = good.read_bytes()
    (tmp / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    cases["truncated gzip"] = (str(tmp / "truncated.nii.gz"), "not a readable NIfTI")
    (tmp / "garbage_gz.nii.gz").write_bytes(gzip.compress(b"\x00" * 400))
    cases["gzip of garbage"] = (str(tmp / "garbage_gz.nii.gz"), "not a readable NIfTI")
    cases["2D image"] = (_save(tmp / "two_d.nii.gz", _blob()[:, :, 0]), "expected a 3D image")
    cases["4D image"] = (_save(tmp / "four_d.nii.gz", np.stack([_blob()] * 3, -1)), "expected a 3D image")
    nan = _blob()
    nan[3, 3, 3] = np.nan
    cases["NaN voxel"] = (_save(tmp / "nan.nii.gz", nan), "NaN/Inf")
    inf = _blob()
    inf[2, 2, 2] = np.inf
    cases["Inf voxel"] = (_save(tmp / "inf.nii.gz", inf), "NaN/Inf")
    cases["constant image"] = (_save(tmp / "zeros.nii.gz", np.zeros(SHAPE, np.float32)), "constant")
    cases["missing file"] = (str(tmp / "does_not_exist.nii.gz"), "not found")
    cases["directory"] = (str(tmp), "not found")
    huge_spacing = np.diag([1e-4, 1e-4, 1e-4, 1.0])
    cases["absurd spacing"] = (_save(tmp / "tiny_spacing.nii.gz", _blob(), huge_spacing), "outside 0.05-50 mm")
    return cases


BAD = ["not a NIfTI", "truncated gzip", "gzip of garbage", "2D image", "4D image", "NaN voxel", "Inf voxel",
       "constant image", "missing file", "directory", "absurd spacing"]  # fmt: skip


@pytest.mark.parametrize("role", ["moving", "fixed"])
@pytest.mark.parametrize("case", BAD)
def test_bad_image_is_refused_with_the_file_named(case, role, good, tmp_path, ckpt):
    path, fragment = _bad_files(tmp_path)[case]
    files = dict(good)
    files[role] = path
    out = tmp_path / "out"
    proc = _register(files["moving"], files["fixed"], out, ckpt)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error:") and fragment in err and Path(path).name in err, err
    assert "Traceback" not in proc.stderr
    assert _no_outputs(out)


def test_unknown_bundle_and_missing_weights(good, tmp_path):
    proc = _cli(
        "register",
        "--bundle",
        "no_such_bundle",
        "--moving",
        good["moving"],
        "--fixed",
        good["fixed"],
        "--out",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 2 and "unknown bundle 'no_such_bundle'" in proc.stderr
    proc = _cli("register", "--bundle", BUNDLE, "--moving", good["moving"], "--fixed", good["fixed"], "--out", str(tmp_path / "o"),
                "--ckpt", str(tmp_path / "nope.pt"))  # fmt: skip
    assert proc.returncode == 2 and "nope.pt: no weights" in proc.stderr


def test_pickled_checkpoint_is_refused(good, tmp_path):
    bad = tmp_path / "pickled.pt"
    torch.save({"model": Evil()}, bad)
    proc = _register(good["moving"], good["fixed"], tmp_path / "o", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pickled.pt" in proc.stderr or "weights_only" in proc.stderr or "Unsupported" in proc.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_output_not_writable(good, tmp_path, ckpt):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    proc = _register(good["moving"], good["fixed"], ro / "out", ckpt)
    assert proc.returncode == 2 and "not writable" in proc.stderr


def test_output_path_is_a_file(good, tmp_path, ckpt):
    f = tmp_path / "a_file"
    f.write_text("x")
    proc = _register(good["moving"], good["fixed"], f, ckpt)
    assert proc.returncode == 2 and "not a folder" in proc.stderr


def test_different_orientation_and_spacing_work_and_outputs_exist_once(good, tmp_path, ckpt):
    # moving stored RAS at 1 mm, fixed LIA-like at 1.5 mm: must resample, not fail
    lia = np.array([[-1.5, 0, 0, 10], [0, 0, 1.5, -12], [0, -1.5, 0, 9], [0, 0, 0, 1]])
    fixed = _save(tmp_path / "fixed_lia.nii.gz", _blob(), lia)
    moving = _save(tmp_path / "moving_ras.nii.gz", _blob(0.5), np.diag([1.0, 1.0, 1.0, 1.0]))
    out = tmp_path / "out"
    proc = _register(moving, fixed, out, ckpt)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pair = out / "moving_ras_to_fixed_lia"
    warped = nib.load(pair / "warped.nii.gz")
    assert warped.shape == SHAPE and np.allclose(warped.affine, lia)
    # a second run refuses to overwrite silently, and leaves the first outputs intact
    before = (pair / "warped.nii.gz").read_bytes()
    proc = _register(moving, fixed, out, ckpt)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (pair / "warped.nii.gz").read_bytes() == before
    proc = _register(moving, fixed, out, ckpt, "--overwrite")
    assert proc.returncode == 0


def test_batch_reports_missing_datalist_entries(tmp_path, good, ckpt):
    dl = tmp_path / "pairs.json"
    dl.write_text('{"test": [{"moving_image": "moving.nii.gz", "fixed_image": "gone.nii.gz"}]}')
    proc = _cli("batch", "--bundle", BUNDLE, "--datalist", str(dl), "--out", str(tmp_path / "o"), "--ckpt", ckpt)
    # recorded as a failed pair (one line naming the file), exit code 1 (tests/robustness/test_reliability.py)
    assert proc.returncode == 1 and "gone.nii.gz: file not found" in proc.stderr and "Traceback" not in proc.stderr
    dl.write_text("{not json")
    proc = _cli("batch", "--bundle", BUNDLE, "--datalist", str(dl), "--out", str(tmp_path / "o"), "--ckpt", ckpt)
    assert proc.returncode == 2 and "pairs.json: not valid JSON" in proc.stderr


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("shape", "label geometry"),
        ("affine", "label geometry"),
        ("empty", "label map is empty"),
        ("corrupt", "not a readable NIfTI"),
    ],
)
def test_bad_label_maps_are_refused(case, fragment, good, tmp_path, ckpt):
    lab = (_blob() > 0.5).astype(np.int16)
    if case == "shape":
        path = _save(tmp_path / "lab.nii.gz", lab[:-2])
    elif case == "affine":
        path = _save(tmp_path / "lab.nii.gz", lab, np.diag([2.0, 2.0, 2.0, 1.0]))
    elif case == "empty":
        path = _save(tmp_path / "lab.nii.gz", np.zeros_like(lab))
    else:
        path = str(tmp_path / "lab.nii.gz")
        Path(path).write_bytes(b"\x1f\x8b broken")
    out = tmp_path / "out"
    proc = _register(good["moving"], good["fixed"], out, ckpt, "--moving_label", path)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert fragment in proc.stderr and "lab.nii.gz" in proc.stderr and "Traceback" not in proc.stderr
    assert _no_outputs(out)


@pytest.mark.parametrize("case", ["truncated gzip", "NaN voxel"])
def test_monai_bundle_run_fails_naming_the_file_without_partial_outputs(case, good, tmp_path, ckpt):
    path, fragment = _bad_files(tmp_path)[case]
    out = tmp_path / "out"
    bundle = ROOT / "bundles" / BUNDLE
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
         "--bundle_root", str(bundle), "--moving", path, "--fixed", good["fixed"], "--output_dir", str(out),
         "--ckpt_path", ckpt, "--device", "$torch.device('cpu')"],
        capture_output=True, text=True, cwd=bundle, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600,
    )  # fmt: skip
    assert proc.returncode != 0
    assert fragment in proc.stderr and Path(path).name in proc.stderr
    assert _no_outputs(out)


def test_batch_never_overwrites_one_pair_with_another(tmp_path, ckpt):
    # the same file names in two folders (like Learn2Reg/LUMIR layouts): ids keep the outputs apart ...
    for sub, shift in (("a", 1.0), ("b", -1.0)):
        (tmp_path / sub).mkdir()
        _save(tmp_path / sub / "moving.nii.gz", _blob(shift))
        _save(tmp_path / sub / "fixed.nii.gz", _blob())
    entries = [
        {"id": f"pair_{s}", "moving_image": f"{s}/moving.nii.gz", "fixed_image": f"{s}/fixed.nii.gz"} for s in "ab"
    ]
    dl = tmp_path / "pairs.json"
    dl.write_text(__import__("json").dumps({"test": entries}))
    out = tmp_path / "out"
    proc = _cli("batch", "--bundle", BUNDLE, "--datalist", str(dl), "--out", str(out), "--ckpt", ckpt)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "pair_a" / "warped.nii.gz").is_file() and (out / "pair_b" / "warped.nii.gz").is_file()
    assert (out / "pair_a" / "warped.nii.gz").read_bytes() != (out / "pair_b" / "warped.nii.gz").read_bytes()
    # ... and without ids the collision is an error, not a silent overwrite
    dl.write_text(__import__("json").dumps({"test": [{k: v for k, v in e.items() if k != "id"} for e in entries]}))
    proc = _cli("batch", "--bundle", BUNDLE, "--datalist", str(dl), "--out", str(tmp_path / "out2"), "--ckpt", ckpt)
    assert proc.returncode == 2 and "give each datalist entry a unique 'id'" in proc.stderr


def test_instance_iterations_option(good, tmp_path, ckpt):
    out = tmp_path / "out"
    proc = _register(good["moving"], good["fixed"], out, ckpt, "--instance_iterations", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    metrics = json.loads((out / "moving_to_fixed" / "metrics.json").read_text())["metrics"]
    assert metrics["instance_iterations"] == 16  # 8 x the bundle's instance_schedule [0.75, 1, 0.25]: 6 + 8 + 2 steps
    assert metrics["seconds_instance_optimisation"] > 0
    for bad in ("-1", "many"):
        proc = _register(good["moving"], good["fixed"], tmp_path / "bad", ckpt, "--instance_iterations", bad)
        assert proc.returncode == 2 and "--instance_iterations must be an integer >= 0" in proc.stderr, proc.stderr
        assert not (tmp_path / "bad").exists()
    proc = _cli("register", "--bundle", "cardiac_cine_ngf_bspline", "--moving", good["moving"], "--fixed",
                good["fixed"], "--out", str(tmp_path / "c"), "--instance_iterations", "5")  # fmt: skip
    assert proc.returncode == 2 and "has no instance optimisation" in proc.stderr, proc.stderr


def test_outputs_and_compression_options(good, tmp_path, ckpt):
    import json

    out = tmp_path / "out"
    proc = _register(good["moving"], good["fixed"], out, ckpt, "--outputs", "warped,itk", "--compression", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = out / "moving_to_fixed"
    assert {p.name for p in folder.iterdir()} == {"warped.nii.gz", "displacement_itk.nii.gz", "metrics.json"}
    assert set(json.loads((folder / "metrics.json").read_text())["timings"]["writers"]) == {"warped", "itk"}
    for args, message in (
        (("--outputs", "warped,displacement"), "--outputs: unknown output(s) 'displacement'; choose from warped"),
        (("--outputs", "labels"), "--outputs labels needs --moving_label"),
        (("--compression", "11"), "--compression must be a gzip level 0-9"),
    ):
        proc = _register(good["moving"], good["fixed"], tmp_path / "bad", ckpt, *args)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
