"""Learning-rate schedule that survives resuming: the rate is a function of the epoch number alone."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from ignite.engine import Engine, Events

__all__ = ["EpochLearningRate"]


class EpochLearningRate:
    """Set every parameter group's learning rate at the start of each epoch from a step schedule.

    ``milestones`` maps a 1-based epoch (a string key in JSON configs) to the rate used from that epoch on; before
    the first milestone the rate is ``initial``. Because the rate depends only on ``engine.state.epoch``, a run
    resumed from a checkpoint (:class:`common.engines.training.ResumeFromLatest`, which restores the epoch and the
    optimiser's saved rate) gets the same rate as an uninterrupted run, with no scheduler state to save. An empty
    ``milestones`` leaves the optimiser alone (the bundles' default).

    Raises:
        ValueError: a milestone below 1 or a rate that is not positive.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial: float, milestones: Mapping[str | int, float]):
        self.optimizer, self.initial = optimizer, float(initial)
        self.milestones = sorted((int(epoch), float(rate)) for epoch, rate in dict(milestones or {}).items())
        bad = [f"{e}: {r}" for e, r in self.milestones if e < 1 or r <= 0] + (
            [] if self.initial > 0 else [str(initial)]
        )
        if bad:
            raise ValueError(f"learning-rate schedule: epochs start at 1 and rates must be > 0 (got {', '.join(bad)}).")

    def rate(self, epoch: int) -> float:
        """The learning rate of (1-based) ``epoch``."""
        current = self.initial
        for start, value in self.milestones:
            if epoch >= start:
                current = value
        return current

    def attach(self, engine: Engine) -> None:
        if self.milestones:
            engine.add_event_handler(Events.EPOCH_STARTED, self._set)

    def _set(self, engine: Engine) -> None:
        lr = self.rate(engine.state.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
