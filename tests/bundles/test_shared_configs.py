"""The config fragments several bundles carry word for word stay identical to bundles/_shared/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "sync_bundle_configs.py"
SHARED = ROOT / "bundles" / "_shared"


def _check(shared: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--shared", str(shared), "--check", "True"],
                          capture_output=True, text=True)  # fmt: skip


def test_every_bundle_copy_equals_the_shared_fragment():
    listing = json.loads((SHARED / "shared.json").read_text())
    assert sum(len(v) for v in listing.values()) >= 13
    fragment = json.loads((SHARED / "brain_train.fragment.json").read_text())
    assert len(fragment["bundles"]) == 4 and {"train#trainer", "validate#evaluator", "run"} <= set(fragment["ids"])
    inference = json.loads((SHARED / "brain_inference.fragment.json").read_text())  # instance-optimisation defaults
    assert inference["config"] == "inference.json" and len(inference["bundles"]) == 3
    assert {"instance_optimiser", "instance_reg_weight", "instance_grid_factor", "instance_fold_weight"} <= set(
        inference["ids"]
    )
    proc = _check(SHARED)
    assert proc.returncode == 0, proc.stdout


def test_check_names_a_drifted_copy_and_sync_repairs_it(tmp_path):
    shared = tmp_path / "bundles" / "_shared"
    shared.mkdir(parents=True)
    (shared / "logging.conf").write_text("[loggers]\nkeys=root\n")
    (shared / "shared.json").write_text(json.dumps({"logging.conf": ["b1", "b2"]}))
    for b in ("b1", "b2"):
        (tmp_path / "bundles" / b / "configs").mkdir(parents=True)
        shutil.copyfile(shared / "logging.conf", tmp_path / "bundles" / b / "configs" / "logging.conf")
    (tmp_path / "bundles" / "b2" / "configs" / "logging.conf").write_text("changed\n")
    run = [sys.executable, str(SCRIPT), "--shared", str(shared)]
    proc = _check(shared)
    assert proc.returncode == 1 and "b2/configs/logging.conf: differs" in proc.stdout and "b1" not in proc.stdout
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    assert (tmp_path / "bundles" / "b2" / "configs" / "logging.conf").read_text() == "[loggers]\nkeys=root\n"
    assert _check(shared).returncode == 0


def test_a_drifted_config_value_is_named_and_only_that_id_is_repaired(tmp_path):
    shared = tmp_path / "bundles" / "_shared"
    shared.mkdir(parents=True)
    (shared / "shared.json").write_text("{}")
    ids = {"seed": 0, "train#trainer": {"_target_": "T", "max_epochs": "@max_epochs"}}
    fragment = {"config": "train.json", "bundles": ["b1", "b2"], "ids": ids}
    (shared / "t.fragment.json").write_text(json.dumps(fragment))
    own = {"b1": {"lr": 1e-4, "seed": 0, "train": {"trainer": ids["train#trainer"], "dataset": "d1"}},
           "b2": {"lr": 4e-4, "seed": 3, "train": {"trainer": {"_target_": "T"}, "dataset": "d2"}}}  # fmt: skip
    for b, config in own.items():
        (tmp_path / "bundles" / b / "configs").mkdir(parents=True)
        (tmp_path / "bundles" / b / "configs" / "train.json").write_text(json.dumps(config, indent=4) + "\n")
    proc = _check(shared)
    assert proc.returncode == 1 and "b1" not in proc.stdout
    assert "b2/configs/train.json: differs" in proc.stdout and "(seed, train#trainer)" in proc.stdout
    subprocess.run([sys.executable, str(SCRIPT), "--shared", str(shared)], check=True, capture_output=True)
    repaired = json.loads((tmp_path / "bundles" / "b2" / "configs" / "train.json").read_text())
    assert repaired == {"lr": 4e-4, "seed": 0, "train": {"trainer": ids["train#trainer"], "dataset": "d2"}}
    assert _check(shared).returncode == 0


def test_an_id_missing_from_a_bundle_is_named_and_added(tmp_path):
    shared = tmp_path / "bundles" / "_shared"
    shared.mkdir(parents=True)
    (shared / "shared.json").write_text("{}")
    ids = {"seed": 0, "train#schedule": {"_target_": "S"}}
    (shared / "t.fragment.json").write_text(json.dumps({"config": "train.json", "bundles": ["b1"], "ids": ids}))
    (tmp_path / "bundles" / "b1" / "configs").mkdir(parents=True)
    (tmp_path / "bundles" / "b1" / "configs" / "train.json").write_text(json.dumps({"seed": 0, "train": {}}))
    proc = _check(shared)
    assert proc.returncode == 1 and "(train#schedule)" in proc.stdout
    subprocess.run([sys.executable, str(SCRIPT), "--shared", str(shared)], check=True, capture_output=True)
    config = json.loads((tmp_path / "bundles" / "b1" / "configs" / "train.json").read_text())
    assert config == {"seed": 0, "train": {"schedule": {"_target_": "S"}}}
