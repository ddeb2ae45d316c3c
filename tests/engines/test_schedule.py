"""EpochLearningRate: a step schedule of the epoch number, the same whether a run is resumed or not."""

import pytest
import torch
from ignite.engine import Engine

from common.engines.schedule import EpochLearningRate


def _optimizer(lr=0.4):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _run(opt, schedule, state=None, max_epochs=5):
    seen = {}

    def step(engine, _):
        seen.setdefault(engine.state.epoch, set()).add(opt.param_groups[0]["lr"])

    engine = Engine(step)
    schedule.attach(engine)
    if state is not None:
        engine.load_state_dict(state)
    engine.run(range(2), max_epochs=max_epochs, epoch_length=2)
    return {epoch: rates.pop() for epoch, rates in seen.items() if len(rates) == 1}


def test_rate_steps_at_the_milestones():
    sched = EpochLearningRate(_optimizer(), 0.4, {"3": 0.1, "5": 0.025})
    assert [sched.rate(e) for e in range(1, 7)] == [0.4, 0.4, 0.1, 0.1, 0.025, 0.025]


def test_handler_sets_every_epoch_and_a_resumed_run_gets_the_same_rates():
    opt = _optimizer()
    full = _run(opt, EpochLearningRate(opt, 0.4, {"3": 0.1, "5": 0.025}))
    assert full == {1: 0.4, 2: 0.4, 3: 0.1, 4: 0.1, 5: 0.025}
    # resumed after epoch 3 with the optimiser state of that checkpoint (lr 0.1 saved), then after epoch 1 from a
    # checkpoint written before the schedule existed (lr 0.4)
    for done, saved_lr in ((3, 0.1), (1, 0.4)):
        opt = _optimizer(saved_lr)
        resumed = _run(opt, EpochLearningRate(opt, 0.4, {"3": 0.1, "5": 0.025}),
                       state={"epoch": done, "epoch_length": 2, "max_epochs": 5})  # fmt: skip
        assert resumed == {e: full[e] for e in range(done + 1, 6)}


def test_empty_schedule_leaves_the_optimiser_alone():
    opt = _optimizer(0.3)
    assert _run(opt, EpochLearningRate(opt, 0.4, {}), max_epochs=2) == {1: 0.3, 2: 0.3}


@pytest.mark.parametrize("milestones, initial", [({"0": 0.1}, 0.4), ({"2": -1.0}, 0.4), ({}, 0.0)])
def test_bad_schedule_is_refused(milestones, initial):
    with pytest.raises(ValueError, match="learning-rate schedule"):
        EpochLearningRate(_optimizer(), initial, milestones)


def test_brain_bundles_carry_the_schedule():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "bundles"
    lumir = json.loads((root / "brain_mri_lumir_cascade/configs/train.json").read_text())
    assert lumir["lr_milestones"] == {"61": 0.0001, "91": 0.000025}
    assert "$@train#lr_schedule.attach(@train#trainer)" in lumir["run"]
