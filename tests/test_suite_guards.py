"""The suite's own guards: a hanging test is cut off with its stacks printed instead of eating the CI job's limit."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import tests.conftest as suite_conftest

ROOT = Path(__file__).resolve().parents[1]


def test_a_hanging_test_is_stopped_and_its_stack_printed(tmp_path):
    (tmp_path / "test_hangs.py").write_text("import time\n\ndef test_sleeps_forever():\n    time.sleep(600)\n")
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(tmp_path), "-o", "timeout=3", str(tmp_path / "test_hangs.py")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert run.returncode != 0
    assert elapsed < 60, elapsed
    out = run.stdout + run.stderr
    assert "Timeout" in out and "test_sleeps_forever" in out and "time.sleep(600)" in out, out[-2000:]


def test_the_default_limit_is_set_and_slow_tests_get_the_long_one(request):
    assert float(request.config.getini("timeout")) == 600
    assert request.config.getini("timeout_method") == "thread"

    class Item:
        def __init__(self, *names):
            self.markers = [getattr(pytest.mark, n) for n in names]

        def get_closest_marker(self, name):
            return next((m for m in self.markers if m.name == name), None)

        def add_marker(self, mark):
            self.markers.append(mark)

    slow, fast, own = Item("slow"), Item(), Item("slow", "timeout")
    suite_conftest.pytest_collection_modifyitems(request.config, [slow, fast, own])
    assert slow.get_closest_marker("timeout").args == (suite_conftest.SLOW_TEST_TIMEOUT_S,)
    assert fast.get_closest_marker("timeout") is None
    assert own.get_closest_marker("timeout").args == ()
