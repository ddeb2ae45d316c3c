"""CSV logs of a training run: the loss terms per iteration (:class:`LossTermsCSV`) and validation metrics per
epoch (:class:`MetricCSV`); importable from :mod:`common.engines.training` as the bundles' configs name them."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from common.io.nifti import atomic_path

__all__ = ["LossTermsCSV", "MetricCSV"]


class LossTermsCSV:
    """Append each iteration's loss terms (``loss_function.last_terms``) to a CSV (flushed every ``every`` rows).

    A resumed run replays the iterations after its checkpoint: before this process's first rows are appended,
    rows of an earlier (interrupted) run from that iteration on are dropped, so every iteration appears once.
    """

    def __init__(self, path: str, loss_function: Any, every: int = 10) -> None:
        self.path, self.loss_function, self.every = Path(path), loss_function, max(1, int(every))
        self.buffer: list[dict[str, Any]] = []
        self._trimmed = False

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._flush)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._flush_on_error)

    def _collect(self, engine) -> None:
        terms = dict(getattr(self.loss_function, "last_terms", {}) or {})
        terms = {"iteration": engine.state.iteration, "epoch": engine.state.epoch, **terms}
        self.buffer.append(terms)
        if len(self.buffer) >= self.every:
            self._flush(engine)

    def _flush_on_error(self, engine, exc: Exception) -> None:
        self._flush(engine)
        raise exc

    def _flush(self, engine) -> None:
        if not self.buffer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._trimmed:
            self._trim_replayed(min(int(r["iteration"]) for r in self.buffer))
            self._trimmed = True
        new = not self.path.exists()
        keys = list(dict.fromkeys(k for row in self.buffer for k in row))
        if not new:
            with open(self.path) as fh:
                header = next(csv.reader(fh), [])
            keys = header + [k for k in keys if k not in header]
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(self.buffer)
        self.buffer = []

    def _trim_replayed(self, first: int) -> None:
        if not self.path.is_file():
            return
        with open(self.path, newline="") as fh:
            reader = csv.DictReader(fh)
            header, rows = reader.fieldnames or [], list(reader)
        keep = [r for r in rows if str(r.get("iteration", "")).isdigit() and int(r["iteration"]) < first]
        if len(keep) == len(rows):
            return
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(keep)


class MetricCSV:
    """Evaluator handler: append ``engine.state.metrics`` with the trainer's epoch/iteration to a CSV after each run."""

    def __init__(self, path: str, trainer: Any = None) -> None:
        self.path, self.trainer = Path(path), trainer

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self._write)

    def _write(self, engine) -> None:
        row = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        if self.trainer is not None:
            row = {"epoch": self.trainer.state.epoch, "iteration": self.trainer.state.iteration, **row}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
