"""Issue 28: nothing lost when runs share a folder, every user error one clear line, crash leftovers cleaned.

Subprocess tests go through the public entry points (``python -m common``, ``python -m monai.bundle run``) on tiny
3D blobs with the bundle's untrained network (the ``ckpt`` fixture); unit tests cover the helpers behind them.
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
import torch
from test_cli_bad_inputs import BUNDLE, ROOT, _blob, _cli, _no_outputs, _register, _save

from common.engines.inference import remove_stale_partials
from common.engines.summary import merge_summary
from common.errors import friendly, root_cause
from common.io.nifti import ImageReadError, read_label_map, read_nifti


def _last_error(proc: subprocess.CompletedProcess) -> str:
    lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("error:")]
    assert lines, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[-1]


# ------------------------------------------------------------------------------------------------ readers (unit)
def test_label_maps_must_hold_whole_numbers(tmp_path):
    lab = (_blob() > 0.5).astype(np.float32) * 2.0
    ok = _save(tmp_path / "ok.nii.gz", lab)  # float storage of whole numbers is fine (FreeSurfer writes those)
    arr, _ = read_label_map(ok)
    assert arr.dtype == np.int64 and set(np.unique(arr)) == {0, 2}
    frac = lab.copy()
    frac[frac > 0] = 1.5
    frac[0, 0, 0] = 2.7
    with pytest.raises(ImageReadError, match=r"frac\.nii\.gz: not a label map: .*non-integer values"):
        read_label_map(_save(tmp_path / "frac.nii.gz", frac))
    with pytest.raises(ImageReadError, match="negative values"):
        read_label_map(_save(tmp_path / "neg.nii.gz", -lab))


def test_rgb_complex_and_overflowing_images_are_named(tmp_path):
    rgb_t = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb = np.zeros((6, 7, 8), dtype=rgb_t)
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    with pytest.raises(ImageReadError, match=r"rgb\.nii\.gz: voxels of type .* are not an intensity image"):
        read_nifti(tmp_path / "rgb.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((6, 7, 8), np.complex64), np.eye(4)), tmp_path / "cplx.nii.gz")
    with pytest.raises(ImageReadError, match=r"cplx\.nii\.gz: .*(complex|not an intensity image)"):
        read_nifti(tmp_path / "cplx.nii.gz")
    big = np.ones((6, 7, 8), np.float64)
    big[1, 2, 3] = 1e300
    nib.save(nib.Nifti1Image(big, np.eye(4)), tmp_path / "big.nii.gz")
    with pytest.raises(ImageReadError, match=r"big\.nii\.gz: values up to 1e\+300 do not fit float32"):
        read_nifti(tmp_path / "big.nii.gz")
    assert read_nifti(tmp_path / "big.nii.gz", dtype=None)[0].max() == 1e300  # stored dtype kept: readable


def test_root_cause_unwraps_monai_wrappers():
    inner = ImageReadError("/data/x.nii.gz: contains 3 NaN/Inf voxels.")
    try:
        try:
            raise inner
        except ImageReadError as e:
            raise RuntimeError("applying transform <LoadRegistrationPaird>") from e
    except RuntimeError as outer:
        assert root_cause(outer) is inner
        assert friendly(outer) == "ImageReadError: /data/x.nii.gz: contains 3 NaN/Inf voxels."
    assert friendly(KeyError("no such key 'x'")) == "KeyError: no such key 'x'"


# ------------------------------------------------------------------------------------------------ CLI errors
@pytest.mark.parametrize("what", ["fractional labels", "rgb image", "overflow", "out below a file", "cuda"])
def test_cli_errors_are_one_line_naming_the_culprit(what, good, tmp_path, ckpt):
    out, extra, moving = tmp_path / "out", [], good["moving"]
    if what == "fractional labels":
        lab = (_blob() > 0.5).astype(np.float32) * 1.5
        extra, fragment = ["--moving_label", _save(tmp_path / "lab.nii.gz", lab)], "lab.nii.gz: not a label map"
    elif what == "rgb image":
        rgb = np.zeros(tuple(_blob().shape), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        nib.save(nib.Nifti1Image(rgb, np.diag([1.5, 1.5, 1.5, 1.0])), tmp_path / "rgb.nii.gz")
        moving, fragment = str(tmp_path / "rgb.nii.gz"), "rgb.nii.gz: voxels of type"
    elif what == "overflow":
        big = _blob().astype(np.float64)
        big[0, 0, 0] = 1e300
        moving, fragment = _save(tmp_path / "big.nii.gz", big), "big.nii.gz: values up to 1e+300"
    elif what == "out below a file":
        (tmp_path / "file").write_text("x")
        out, fragment = tmp_path / "file" / "sub", "file is a file, not a folder"
    else:
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra, fragment = ["--device", "cuda"], "--device cuda: no CUDA GPU is available"
    proc = _register(moving, good["fixed"], out, ckpt, *extra)
    assert proc.returncode == 2
    assert fragment in _last_error(proc)
    assert _no_outputs(out) or what == "out below a file"


@pytest.mark.parametrize("what", ["corrupt", "other bundle"])
def test_wrong_weights_are_refused_naming_the_file_and_owner(what, good, tmp_path):
    if what == "corrupt":
        bad = tmp_path / "model.pt"
        bad.write_bytes((ROOT / "bundles" / BUNDLE / "models" / "model.pt").read_bytes()[:5000])
        fragment = "model.pt: refused to load: not a plain PyTorch weights file"
    else:
        bad = ROOT / "bundles" / "brain_mri_prob_diffeo" / "models" / "model.pt"
        fragment = f"these weights belong to brain_mri_prob_diffeo, not {BUNDLE}"
    proc = _register(good["moving"], good["fixed"], tmp_path / "out", str(bad))
    assert proc.returncode == 2
    err = _last_error(proc)
    assert fragment in err and str(bad.name) in err, err
    assert _no_outputs(tmp_path / "out")


def _bundle_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    bundle = ROOT / "bundles" / BUNDLE
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
         "--bundle_root", str(bundle), *args],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600,
    )  # fmt: skip


@pytest.mark.parametrize("what", ["4D fixed", "singular affine", "no fixed image", "out below a file", "cuda"])
def test_monai_bundle_run_prints_one_line_not_a_traceback(what, good, tmp_path, ckpt):
    fixed, out, extra = good["fixed"], tmp_path / "out", []
    if what == "cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra, fragment = ["--device", "$torch.device('cuda')"], "error: device: Torch not compiled with CUDA"
    elif what == "out below a file":
        (tmp_path / "file").write_text("x")
        out, fragment = tmp_path / "file" / "out", "file is a file"
    elif what == "4D fixed":
        fixed, fragment = _save(tmp_path / "f4d.nii.gz", np.stack([_blob()] * 2, -1)), "f4d.nii.gz: expected a 3D"
    elif what == "singular affine":
        aff = np.diag([1.5, 1.5, 0.0, 1.0])  # a header whose sform squashes one axis (qform unset)
        img = nib.Nifti1Image(_blob(), None)
        img.header.set_sform(aff, code=1)
        img.header.set_qform(None, code=0)
        nib.save(img, tmp_path / "sing.nii.gz")
        fixed, fragment = str(tmp_path / "sing.nii.gz"), "sing.nii.gz"
    else:
        fixed, fragment = None, "fixed"
    args = ["--moving", good["moving"], "--output_dir", str(out), "--ckpt_path", ckpt]
    args += (["--fixed", fixed] if fixed else []) + extra
    proc = _bundle_run(*args, cwd=tmp_path)
    assert proc.returncode != 0
    err = _last_error(proc)
    assert fragment in err, err
    assert _no_outputs(tmp_path / "out")


# ------------------------------------------------------------------------------------------------ batch
def test_batch_goes_on_past_a_bad_pair_records_it_and_resumes(tmp_path, ckpt):
    entries = []
    for i in range(3):
        moving = _blob(1.0 + 0.2 * i)
        if i == 1:
            moving[2, 2, 2] = np.nan
        entries.append({"id": f"p{i}", "moving_image": _save(tmp_path / f"m{i}.nii.gz", moving),
                        "fixed_image": _save(tmp_path / f"f{i}.nii.gz", _blob())})  # fmt: skip
    dl = tmp_path / "pairs.json"
    dl.write_text(json.dumps({"test": entries}))
    out = tmp_path / "out"
    cmd = ["batch", "--bundle", BUNDLE, "--datalist", str(dl), "--out", str(out), "--ckpt", ckpt]
    proc = _cli(*cmd)
    assert proc.returncode == 1, proc.stderr[-2000:]
    err = _last_error(proc)
    assert err.startswith("error: pair p1:") and "m1.nii.gz: contains 1 NaN/Inf voxels" in err
    assert "2 pairs registered, 0 already done, 1 failed" in proc.stdout
    assert (out / "p0" / "metrics.json").is_file() and (out / "p2" / "metrics.json").is_file()
    assert not (out / "p1").exists()
    rows = {r["name"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert set(rows) == {"p0", "p1", "p2"} and rows["p1"]["status"].startswith("failed: ImageReadError")
    assert rows["p0"]["bundle"] == BUNDLE and rows["p0"]["status"] == ""
    before = (out / "p0" / "warped.nii.gz").stat().st_mtime_ns
    # the bad pair fixed: --resume registers only it, keeps the others, and the summary has one row per pair
    _save(tmp_path / "m1.nii.gz", _blob(1.2))
    proc = _cli(*cmd, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 pairs registered, 2 already done, 0 failed" in proc.stdout
    assert (out / "p0" / "warped.nii.gz").stat().st_mtime_ns == before
    rows = {r["name"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert set(rows) == {"p0", "p1", "p2"} and rows["p1"]["status"] == "" and rows["p1"]["ncc_after"]
    # without --resume an existing output folder is an error naming the way out
    proc = _cli(*cmd)
    assert proc.returncode == 2 and "pass --resume" in _last_error(proc)


def _blob_pairs(tmp_path: Path, n: int = 3) -> Path:
    entries = [{"id": f"p{i}", "moving_image": _save(tmp_path / f"m{i}.nii.gz", _blob(1.0 + 0.3 * i)),
                "fixed_image": _save(tmp_path / f"f{i}.nii.gz", _blob())} for i in range(n)]  # fmt: skip
    dl = tmp_path / "pairs.json"
    dl.write_text(json.dumps({"test": entries}))
    return dl


def test_pipelined_batch_writes_what_the_sequential_batch_writes(tmp_path, ckpt):
    """batch writes a pair's outputs while the next pair is registered (default): the same files, byte for byte, and
    the same summary rows as ``--pipeline False``."""
    dl = _blob_pairs(tmp_path)
    outs = {}
    for mode in ("True", "False"):
        outs[mode] = tmp_path / f"out_{mode}"
        proc = _cli("batch", "--bundle", BUNDLE, "--datalist", str(dl), "--out", str(outs[mode]), "--ckpt", ckpt,
                    "--pipeline", mode)  # fmt: skip
        assert proc.returncode == 0 and "3 pairs registered" in proc.stdout, proc.stderr[-2000:]
    files = sorted(str(p.relative_to(outs["True"])) for p in outs["True"].rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(outs["False"])) for p in outs["False"].rglob("*") if p.is_file())
    assert len([f for f in files if f.endswith("warped.nii.gz")]) == 3
    for name in files:
        if not name.endswith(("metrics.json", "summary.csv")):  # those hold timings
            assert (outs["True"] / name).read_bytes() == (outs["False"] / name).read_bytes(), name
    rows = {m: {r["name"]: r for r in csv.DictReader(open(outs[m] / "summary.csv"))} for m in outs}
    assert set(rows["True"]) == {"p0", "p1", "p2"}
    for name, row in rows["True"].items():
        same = [k for k in row if not k.startswith(("seconds", "out_dir"))]
        assert {k: row[k] for k in same} == {k: rows["False"][name][k] for k in same}
    finished = sorted(json.loads((outs["True"] / p / "metrics.json").read_text())["timings"]["finished_at"]
                      for p in ("p0", "p1", "p2"))  # fmt: skip
    assert finished[0] < finished[1] < finished[2]


@pytest.mark.parametrize("bad", ["p1", "p2"], ids=["while_the_next_registers", "the_last_pair"])
def test_a_pair_whose_outputs_fail_in_the_background_is_reported_and_the_others_kept(tmp_path, ckpt, monkeypatch, bad):
    """With the pipeline, a pair's writers fail in the background (p1: while p2 is registered; p2: the last pair,
    found when the run ends): that pair gets its one-line failure in the summary and no folder (not even a partial
    one), the others are complete, the exit code says a pair failed."""
    import common.__main__ as cli
    import common.engines.inference as inference

    real = inference.write_pair_outputs

    def failing(ctx, threads=2):
        if ctx.title == bad:
            raise OSError(f"{ctx.out}: No space left on device (simulated)")
        return real(ctx, threads)

    monkeypatch.setattr(inference, "write_pair_outputs", failing)
    out = tmp_path / "out"
    code = cli._batch(BUNDLE, str(_blob_pairs(tmp_path)), str(out), "test", "cpu", False, ckpt, None, False, None,
                      None, True)  # fmt: skip
    assert code == 1
    good = sorted({"p0", "p1", "p2"} - {bad})
    assert all((out / g / "metrics.json").is_file() for g in good)
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock")) == [*good, "summary.csv"]  # no partial
    rows = {r["name"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows[bad]["status"].startswith("failed: ") and "No space left on device" in rows[bad]["status"]
    assert all(rows[g]["status"] == "" for g in good)


def test_datalist_with_a_number_for_a_path(tmp_path, ckpt):
    dl = tmp_path / "pairs.json"
    dl.write_text(json.dumps({"test": [{"moving_image": 3, "fixed_image": "f.nii.gz"}]}))
    proc = _cli("batch", "--bundle", BUNDLE, "--datalist", str(dl), "--out", str(tmp_path / "o"), "--ckpt", ckpt)
    assert proc.returncode == 2
    assert "pairs.json: entry 0 of 'test': moving_image must be a file path" in _last_error(proc)


# ------------------------------------------------------------------------------------------------ shared folders
def test_two_concurrent_runs_into_one_folder_lose_nothing(tmp_path, ckpt):
    """Same pair, two bundles, one --out, at the same time: one wins, the other is refused (exit 2, says why);
    the folder holds one complete result whose metrics.json names its bundle. Two different pairs into one
    --out at the same time: both rows in summary.csv."""
    f = _save(tmp_path / "fixed.nii.gz", _blob())
    m = _save(tmp_path / "moving.nii.gz", _blob(1.0))
    m2 = _save(tmp_path / "moving2.nii.gz", _blob(-1.0))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def start(bundle: str, moving: str) -> subprocess.Popen:
        args = ["register", "--bundle", bundle, "--moving", moving, "--fixed", f, "--out", str(out)]
        return subprocess.Popen([sys.executable, "-m", "common", *args], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

    procs = [start(BUNDLE, m), start("brain_mri_lumir_cascade", m), start(BUNDLE, m2)]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = [r[0] for r in results[:2]]
    assert sorted(codes) == [0, 2], results
    loser = results[codes.index(2)][2]
    assert "moving_to_fixed" in loser and ("written meanwhile by" in loser or "output folder exists" in loser)
    winner = [BUNDLE, "brain_mri_lumir_cascade"][codes.index(0)]
    metrics = json.loads((out / "moving_to_fixed" / "metrics.json").read_text())
    assert metrics["provenance"]["bundle"] == winner and len(metrics["provenance"]["weights_sha256"]) == 64
    assert results[2][0] == 0, results[2][2][-2000:]
    rows = {r["name"]: r["bundle"] for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows == {"moving_to_fixed": winner, "moving2_to_fixed": BUNDLE}
    assert not [p for p in out.iterdir() if ".partial-" in p.name]


def test_merge_summary_keeps_one_row_per_pair(tmp_path):
    path = tmp_path / "summary.csv"
    merge_summary(path, [{"name": "a", "dice": 0.5}, {"name": "b", "dice": 0.6}])
    merge_summary(path, [{"name": "a", "dice": 0.7, "bundle": "x"}])
    rows = list(csv.DictReader(open(path)))
    assert [(r["name"], r["dice"], r["bundle"]) for r in rows] == [("b", "0.6", ""), ("a", "0.7", "x")]


# ------------------------------------------------------------------------------------------------ leftovers
def test_stale_partial_folders_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".pair.partial-{dead.pid}"
    live = tmp_path / f".other.partial-{os.getppid()}"  # a running process: kept
    for folder in (stale, live):
        folder.mkdir()
        (folder / "warped.nii.gz").write_bytes(b"half")
    assert remove_stale_partials(tmp_path) == [stale]
    assert not stale.exists() and live.exists()


def test_loss_terms_csv_has_each_iteration_once_after_a_resume(tmp_path):
    from types import SimpleNamespace

    from common.engines.training import LossTermsCSV

    path = tmp_path / "loss_terms.csv"
    loss = SimpleNamespace(last_terms={"image": 1.0})

    def run(iterations):
        handler = LossTermsCSV(str(path), loss, every=2)
        for it in iterations:
            loss.last_terms = {"image": float(it)}
            handler._collect(SimpleNamespace(state=SimpleNamespace(iteration=it, epoch=1)))
        handler._flush(None)

    run(range(1, 8))  # killed after iteration 7; the checkpoint was at iteration 4
    run(range(5, 10))  # resumed: replays 5..9
    its = [int(r["iteration"]) for r in csv.DictReader(open(path))]
    assert its == list(range(1, 10))


def test_resume_removes_the_temporary_file_of_a_killed_checkpoint_save(tmp_path):
    from types import SimpleNamespace

    from common.engines.training import ResumeFromLatest

    net = torch.nn.Linear(2, 2)
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"model": net.state_dict()}, ckpts / "latest_checkpoint_epoch=3.pt")
    half = ckpts / ".latest_checkpoint_epoch=4.k2j3h.pt"  # what a kill during SafeCheckpointSaver's write leaves
    half.write_bytes(b"PK\x03\x04 truncated")
    attached = []
    engine = SimpleNamespace(
        logger=SimpleNamespace(info=lambda msg: None), add_event_handler=lambda *a: attached.append(a)
    )
    handler = ResumeFromLatest(str(ckpts), {"model": net})
    handler.attach(engine)
    assert not half.exists() and handler.loaded_from == ckpts / "latest_checkpoint_epoch=3.pt"


def test_a_registration_killed_while_writing_is_cleaned_up_by_the_next_run(tmp_path, ckpt):
    import signal
    import time

    g = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (112, 128, 112)], indexing="ij"))
    ball = lambda s: np.exp(-(((g - 56.0 - s) ** 2).sum(0)) / 900.0).astype(np.float32)  # noqa: E731
    m = _save(tmp_path / "m.nii.gz", ball(2.0), np.eye(4))
    f = _save(tmp_path / "f.nii.gz", ball(0.0), np.eye(4))
    out = tmp_path / "out"
    args = ["register", "--bundle", BUNDLE, "--moving", m, "--fixed", f, "--out", str(out), "--ckpt", ckpt]
    proc = subprocess.Popen([sys.executable, "-m", "common", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    deadline = time.time() + 600
    partial = []
    while time.time() < deadline and proc.poll() is None:
        partial = [p for p in out.glob(".*.partial-*") if any(p.iterdir())] if out.is_dir() else []
        if partial:
            os.kill(proc.pid, signal.SIGKILL)  # killed with outputs half-written
            break
        time.sleep(0.01)
    proc.wait()
    assert partial, "the run finished before a half-written folder was seen"
    assert partial[0].exists() and not (out / "m_to_f").exists()  # nothing half-written under the real name
    rerun = _register(m, f, out, ckpt)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (out / "m_to_f" / "metrics.json").is_file()
    assert not list(out.glob(".*.partial-*"))


def test_batch_overwrite_reports_a_pair_that_fails_although_an_earlier_run_left_its_outputs(
    tmp_path, ckpt, monkeypatch
):
    """``--overwrite`` over an earlier batch's folder: a pair that fails this time is reported (exit code 1, its
    summary row), not taken for done because the earlier run's ``metrics.json`` is still there."""
    import common.__main__ as cli
    import common.engines.inference as inference

    dl, out = str(_blob_pairs(tmp_path)), tmp_path / "out"
    assert cli._batch(BUNDLE, dl, str(out), "test", "cpu", False, ckpt, None, False, None, None, False) == 0
    earlier = (out / "p1" / "metrics.json").read_bytes()
    real = inference.write_pair_outputs

    def failing(ctx, threads=2):
        if ctx.title == "p1":
            raise OSError(f"{ctx.out}: No space left on device (simulated)")
        return real(ctx, threads)

    monkeypatch.setattr(inference, "write_pair_outputs", failing)
    assert cli._batch(BUNDLE, dl, str(out), "test", "cpu", True, ckpt, None, False, None, None, False) == 1
    rows = {r["name"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["p1"]["status"].startswith("failed: ") and "No space left" in rows["p1"]["status"]
    assert rows["p0"]["status"] == rows["p2"]["status"] == ""
    assert (out / "p1" / "metrics.json").read_bytes() == earlier  # the earlier result is left whole, not half-replaced


def test_batch_with_a_relative_datalist_path_and_relative_entries(tmp_path, ckpt, monkeypatch):
    """``batch --datalist pairs.json`` run from the datalist's folder, entries named relative to it: every pair is
    found (they used to be looked up again relative to the output folder, from batch's copy of the list)."""
    import common.__main__ as cli

    entries = []
    for i in range(2):
        _save(tmp_path / f"m{i}.nii.gz", _blob(1.0 + 0.3 * i))
        _save(tmp_path / f"f{i}.nii.gz", _blob())
        entries.append({"id": f"p{i}", "moving_image": f"m{i}.nii.gz", "fixed_image": f"f{i}.nii.gz"})
    (tmp_path / "pairs.json").write_text(json.dumps({"test": entries}))
    monkeypatch.chdir(tmp_path)
    assert cli._batch(BUNDLE, "pairs.json", "out", "test", "cpu", False, ckpt, None, False, None, None, False) == 0
    assert all((tmp_path / "out" / p / "metrics.json").is_file() for p in ("p0", "p1"))
