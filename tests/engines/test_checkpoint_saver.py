"""SafeCheckpointSaver: a resumed run's interval checkpoint replaces the ones an interrupted run left behind."""

from __future__ import annotations

import torch
from ignite.engine import Engine

from common.engines.training import SafeCheckpointSaver


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
