"""``summary.csv`` over the pairs of one inference run, merged with an earlier run's rows in the same folder."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from common.io.nifti import atomic_path

__all__ = ["RegistrationSummaryHandler", "merge_summary"]


class RegistrationSummaryHandler:
    """Ignite handler: collects each pair's ``registration`` record and merges them into ``summary.csv`` at the end
    (or when the run fails), under a file lock (:func:`merge_summary`)."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)
        self.rows: list[dict[str, Any]] = []
        self._waiting: list[dict[str, Any]] = []  # items still being written in the background (pipeline)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._write_and_raise)

    def _write_and_raise(self, engine, exc: Exception) -> None:
        """A failing pair stops the run: the pairs finished before it still get their summary rows."""
        self._resolve(wait=True, raise_errors=False)
        if self.rows:
            merge_summary(self.output_dir / "summary.csv", self.rows)
        raise exc

    def _collect(self, engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        self._waiting += [it for it in items if isinstance(it, dict) and "registration_pending" in it]
        self.rows += [dict(it["registration"]) for it in items
                      if isinstance(it, dict) and "registration" in it and "registration_pending" not in it]  # fmt: skip
        self._resolve(wait=False, raise_errors=False)

    def _resolve(self, wait: bool, raise_errors: bool) -> None:
        """Rows of the background-written pairs that are done (all of them with ``wait``); a failed pair's error is
        raised with ``raise_errors`` (at the end of the run; earlier, the next pair raises it)."""
        error, waiting = None, []
        for it in self._waiting:
            future = it["registration_pending"]
            if not (wait or future.done()):
                waiting.append(it)
            elif future.exception() is None:  # the future returns the item it completed (the evaluator's output
                self.rows.append(dict(future.result()["registration"]))  # holds a copy of the item's keys)
            elif raise_errors:
                error = error or future.exception()
            elif not wait:
                waiting.append(it)  # a failure seen early is still raised when the run ends
        self._waiting = waiting
        if error is not None and raise_errors:
            raise error

    def _write(self, engine) -> None:
        try:
            self._resolve(wait=True, raise_errors=True)
        finally:
            if self.rows:
                merge_summary(self.output_dir / "summary.csv", self.rows)


def merge_summary(path: str | os.PathLike, rows: list[dict[str, Any]], key: str = "name") -> Path:
    """Merge ``rows`` into the CSV at ``path`` under an exclusive file lock: one row per ``key`` (a pair folder)
    across runs, this call's rows replacing earlier ones of the same pair; columns are the union. Two runs writing
    into one output folder at once therefore both keep their rows. Returns the path."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old: list[dict[str, Any]] = []
        if path.is_file():
            with open(path, newline="") as fh:
                old = list(csv.DictReader(fh))
        new_keys = {str(r.get(key)) for r in rows}
        merged = [r for r in old if str(r.get(key)) not in new_keys] + [dict(r) for r in rows]
        keys = list(dict.fromkeys(k for r in merged for k in r))
        keys = [key, *sorted(k for k in keys if k != key)]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(merged)
    return path
