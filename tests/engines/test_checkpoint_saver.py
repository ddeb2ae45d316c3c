"""SafeCheckpointSaver: a resumed run's interval checkpoint replaces the ones an interrupted run left behind, and its
best-metric checkpoint is replaced only by a better score than the earlier run's."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine

from common.engines.training import ResumeFromLatest, SafeCheckpointSaver


def _run(folder, n_saved: int, epochs: int = 2) -> list[str]:
    net = torch.nn.Linear(2, 2)
    trainer = Engine(lambda engine, batch: 0)
    SafeCheckpointSaver(save_dir=str(folder), save_dict={"model": net, "trainer": trainer}, file_prefix="latest",
                        save_interval=1, n_saved=n_saved, epoch_level=True).attach(trainer)  # fmt: skip
    trainer.run([0, 1], max_epochs=epochs)
    return sorted(p.name for p in folder.iterdir())


def test_stale_latest_checkpoints_of_an_earlier_run_are_replaced(tmp_path):
    for name in ("latest_checkpoint_epoch=3.pt", "latest_checkpoint_epoch=7.pt", "best_model.pt", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    # other files (the best model, anything else) are kept; only this saver's own name pattern is cleaned
    assert _run(tmp_path, n_saved=1) == ["best_model.pt", "latest_checkpoint_epoch=2.pt", "notes.txt"]
    assert torch.load(tmp_path / "latest_checkpoint_epoch=2.pt", weights_only=True)["trainer"]["iteration"] == 4


def test_with_several_kept_checkpoints_earlier_files_are_left_alone(tmp_path):
    (tmp_path / "latest_checkpoint_epoch=9.pt").write_bytes(b"x")
    names = _run(tmp_path, n_saved=3, epochs=2)
    assert names == ["latest_checkpoint_epoch=1.pt", "latest_checkpoint_epoch=2.pt", "latest_checkpoint_epoch=9.pt"]


def _validate(folder, scores: list[float], resume: bool = True) -> None:
    """One process's validations (one per epoch) with these scores; the network's weight is set to the score, so
    the weight in ``best_model.pt`` tells which validation it came from. ``resume``: the run resumes from a
    ``latest`` checkpoint in ``folder`` (as the bundles' ``ResumeFromLatest``) when an earlier run left one."""
    net = torch.nn.Linear(1, 1, bias=False)

    def step(engine, batch):
        value = scores[engine.state.epoch - 1]
        engine.state.metrics["dice"] = value
        with torch.no_grad():
            net.weight.fill_(value)

    evaluator = Engine(step)
    ResumeFromLatest(str(folder), {"model": net}, enabled=resume).attach(evaluator)
    SafeCheckpointSaver(save_dir=str(folder), save_dict={"model": net}, save_key_metric=True, key_metric_name="dice",
                        key_metric_filename="best_model.pt").attach(evaluator)  # fmt: skip
    evaluator.run([0], max_epochs=len(scores))
    torch.save({"model": net.state_dict()}, folder / "latest_checkpoint_epoch=1.pt")  # what a trainer would leave


def _best(folder) -> float:
    return round(float(torch.load(folder / "best_model.pt", weights_only=True)["weight"]), 4)


def test_a_resumed_run_replaces_the_best_model_only_with_a_better_score(tmp_path):
    _validate(tmp_path, [0.5, 0.7, 0.6])
    assert _best(tmp_path) == 0.7
    assert json.loads((tmp_path / "best_model.score.json").read_text())["priority"] == pytest.approx(0.7)
    _validate(tmp_path, [0.65, 0.68])  # a new process: worse than the earlier run's best
    assert _best(tmp_path) == 0.7
    _validate(tmp_path, [0.69, 0.75, 0.72])
    assert _best(tmp_path) == 0.75
    assert sorted(p.name for p in tmp_path.iterdir())[:2] == ["best_model.pt", "best_model.score.json"]


def test_a_fresh_run_in_the_same_folder_replaces_an_earlier_runs_best_model(tmp_path):
    _validate(tmp_path, [0.9])
    _validate(tmp_path, [0.3, 0.4], resume=False)  # not resumed: its own best wins, the old score is ignored
    assert _best(tmp_path) == 0.4
    _validate(tmp_path, [0.35])  # resumed from that run: only a score above 0.4 replaces it
    assert _best(tmp_path) == 0.4


def test_a_best_model_without_a_score_record_is_replaced_as_before(tmp_path):
    _validate(tmp_path, [0.9])
    (tmp_path / "best_model.score.json").unlink()  # e.g. written before score records existed
    _validate(tmp_path, [0.3])
    assert _best(tmp_path) == 0.3


def test_a_fresh_run_after_a_resumed_one_in_the_same_process_is_not_held_to_the_old_score(tmp_path):
    _validate(tmp_path, [0.9])
    _validate(tmp_path, [0.5])  # resumed (same process): 0.9 stays
    assert _best(tmp_path) == 0.9
    _validate(tmp_path, [0.4], resume=False)  # then a fresh run in this process: its own best wins
    assert _best(tmp_path) == 0.4
