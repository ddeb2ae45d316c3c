"""Training survives SIGKILL (resumes from the last checkpoint with its optimiser state) and inference/training
are deterministic on CPU."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "brain_mri_hybrid_loss"
from tests.bundles.test_train_workflows import make_tiny_brain_dataset  # noqa: E402


def _train_cmd(datalist: Path, out: Path, max_epochs: int, epoch_length: int) -> list[str]:
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(BUNDLE / "configs" / "train.json"),
        "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
        "--logging_file", str(BUNDLE / "configs" / "logging.conf"),
        "--bundle_root", str(BUNDLE), "--datalist", str(datalist), "--output_dir", str(out),
        "--device", "$torch.device('cpu')", "--channels", "8", "--patch_size", "[32, 32, 32]",
        "--epoch_length", str(epoch_length), "--max_epochs", str(max_epochs),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_sigkill_mid_training_then_same_command_resumes(tmp_path):
    datalist = make_tiny_brain_dataset(tmp_path)
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    # enough epochs that the run is still going when the first checkpoint is seen (a tiny epoch takes ~0.3 s)
    cmd = _train_cmd(datalist, out, max_epochs=12, epoch_length=4)
    proc = subprocess.Popen(cmd, cwd=BUNDLE, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    # wait for the first epoch's checkpoint, then kill during epoch 2
    while time.time() < deadline and not list(ckpts.glob("latest*.pt")):
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    assert list(ckpts.glob("latest*.pt")), "no checkpoint within 300 s"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = sorted(ckpts.glob("latest*.pt"))
    assert len(saved) == 1 and not [p for p in ckpts.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    state = torch.load(saved[0], weights_only=True)  # the surviving checkpoint is complete and loadable
    done = state["trainer"]["iteration"]
    assert done % 4 == 0 and 4 <= done < 48, done
    assert "state" in state["optimizer"] and state["optimizer"]["state"]
    # the same command again: resumes, does not start over
    res = subprocess.run(cmd, cwd=BUNDLE, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {saved[0]}" in (res.stdout + res.stderr)
    final = torch.load(ckpts / "latest_checkpoint_epoch=12.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 48  # 12 epochs x 4 iterations
    # the killed run's checkpoint was replaced, not left beside the resumed run's (n_saved=1)
    assert [p.name for p in ckpts.glob("latest*.pt")] == ["latest_checkpoint_epoch=12.pt"]
    rows = list(csv.DictReader(open(out / "loss_terms.csv")))
    its = [int(r["iteration"]) for r in rows]
    assert its[-1] == 48 and min(i for i in its if i > done) == done + 1  # continued at the next iteration


KILL_DURING_SAVE = """
import io, os, runpy, signal, sys
import torch

_save, calls = torch.save, []


def save(obj, f, *args, **kwargs):  # the 2nd trainer checkpoint: half the bytes reach the disk, then SIGKILL
    if isinstance(obj, dict) and "trainer" in obj:
        calls.append(1)
        if len(calls) == 2:
            buf = io.BytesIO()
            _save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            fh = f if hasattr(f, "write") else open(f, "wb")
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *args, **kwargs)


torch.save = save
sys.argv = ["monai.bundle"] + sys.argv[1:]
runpy.run_module("monai.bundle", run_name="__main__")
"""


def test_sigkill_while_saving_keeps_the_previous_checkpoint_and_resumes(tmp_path):
    datalist = make_tiny_brain_dataset(tmp_path)
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    wrapper = tmp_path / "kill_during_save.py"
    wrapper.write_text(KILL_DURING_SAVE)
    cmd = _train_cmd(datalist, out, max_epochs=3, epoch_length=2)
    res = subprocess.run([sys.executable, str(wrapper), *cmd[3:]], cwd=BUNDLE, env=_env(), capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    # the epoch-2 checkpoint never got its final name; the epoch-1 one is intact and loadable
    assert sorted(p.name for p in ckpts.glob("latest*.pt")) == ["latest_checkpoint_epoch=1.pt"]
    partial = [p for p in ckpts.iterdir() if p.name.startswith(".")]
    assert partial, "the half-written temporary file should be left behind by the kill"
    assert torch.load(ckpts / "latest_checkpoint_epoch=1.pt", weights_only=True)["trainer"]["iteration"] == 2
    # the same command without the kill resumes from epoch 1, ignoring the partial temp file
    res = subprocess.run(cmd, cwd=BUNDLE, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "latest_checkpoint_epoch=1.pt" in (res.stdout + res.stderr)
    final = torch.load(ckpts / "latest_checkpoint_epoch=3.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 6


def test_training_with_a_fixed_seed_reproduces_the_first_losses(tmp_path):
    datalist = make_tiny_brain_dataset(tmp_path)
    losses = []
    for run in ("a", "b"):
        out = tmp_path / run
        res = subprocess.run(
            _train_cmd(datalist, out, 1, 3), cwd=BUNDLE, env=_env(), capture_output=True, text=True, timeout=900
        )
        assert res.returncode == 0, res.stderr[-3000:]
        losses.append([float(r["total"]) for r in csv.DictReader(open(out / "loss_terms.csv"))])
    assert len(losses[0]) == 3 and losses[0] == losses[1]


def test_inference_is_bit_identical_on_cpu(tmp_path):
    from monai.bundle import ConfigParser

    from tests.bundles.test_bundles import demo_pair

    files = demo_pair(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    ckpt = tmp_path / "model.pt"
    torch.manual_seed(3)
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        res = subprocess.run(
            [sys.executable, "-m", "common", "register", "--bundle", str(BUNDLE), "--moving", files["moving"],
             "--fixed", files["fixed"], "--moving_label", files["moving_label"], "--out", str(out), "--ckpt", str(ckpt)],
            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        pair = out / "moving_to_fixed"
        outputs.append({n: (pair / n).read_bytes() for n in ("warped.nii.gz", "warped_label.nii.gz", "disp.nii.gz")})
    for name in outputs[0]:
        assert outputs[0][name] == outputs[1][name], name
