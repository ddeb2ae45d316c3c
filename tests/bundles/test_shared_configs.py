"""The config fragments several bundles carry word for word stay identical to bundles/_shared/."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "sync_bundle_configs.py"


def test_every_bundle_copy_equals_the_shared_fragment():
    sys.path.insert(0, str(SCRIPT.parent))
    from sync_bundle_configs import differing

    listing = json.loads((ROOT / "bundles" / "_shared" / "shared.json").read_text())
    assert sum(len(v) for v in listing.values()) >= 13
    assert differing() == []


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
    proc = subprocess.run([*run, "--check", "True"], capture_output=True, text=True)
    assert proc.returncode == 1 and "b2/configs/logging.conf: differs" in proc.stdout and "b1" not in proc.stdout
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    assert (tmp_path / "bundles" / "b2" / "configs" / "logging.conf").read_text() == "[loggers]\nkeys=root\n"
    assert subprocess.run([*run, "--check", "True"], capture_output=True, text=True).returncode == 0
