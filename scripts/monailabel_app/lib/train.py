"""The MONAI Label trainer of the app: fine-tune a bundle's network on the datastore's own images.

``POST /train/<model>`` (Slicer: *Train*) runs it in MONAI Label's training subprocess: every datastore image
(and the atlas) affinely aligned to the atlas grid, pairs among them, the bundle's own training loss (no labels
needed; a saved ``final`` label adds the label term), see :func:`common.engines.finetune.finetune_bundle`. The
weights go to ``<models_dir>/<model>/model.pt`` (with ``model.json``, the record) and the model's next inference
uses them (``params["weights"]`` says which). Request keys (``/info`` config): ``max_iterations`` (>= 1), ``lr``
(0 = ``min(the bundle's learning_rate, 1e-4)``), ``max_pairs``, ``with_atlas``, ``restart`` (start from the shipped
weights again).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.train import TrainTask

from common.engines.finetune import finetune_bundle

logger = logging.getLogger(__name__)


def fine_tuned_weights(models_dir: Path, name: str) -> Path | None:
    """The model's fine-tuned weights when a fine-tune finished, else None (the bundle's own are served)."""
    path = Path(models_dir) / name / "model.pt"
    return path if path.is_file() else None


class FineTuneTrain(TrainTask):
    def __init__(self, bundle: Path, name: str, models_dir: Path, device: str = "cpu"):
        super().__init__(f"Fine-tunes {bundle.name} on the datastore's images (unsupervised; saved labels add the "
                         "label term); the model serves the new weights afterwards.")  # fmt: skip
        self.bundle, self.name, self.models_dir, self.device = Path(bundle), name, Path(models_dir), device

    def config(self) -> dict[str, Any]:
        return {"max_iterations": 50, "lr": 0.0, "max_pairs": 64, "with_atlas": True, "restart": False}

    def stats(self) -> dict[str, Any]:
        record = self.models_dir / self.name / "model.json"
        return json.loads(record.read_text()) if record.is_file() else {}

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        conf = {**self.config(), **{k: v for k, v in request.items() if k in self.config()}}
        images, labels = [], []
        for image_id in datastore.list_images():
            images.append(datastore.get_image_uri(image_id))
            label_id = datastore.get_label_by_image_id(image_id, "final")
            labels.append(datastore.get_label_uri(label_id, "final") if label_id else None)
        current = fine_tuned_weights(self.models_dir, self.name)
        init = None if conf["restart"] or current is None else current
        logger.info(f"fine-tuning {self.bundle.name} on {len(images)} images ({sum(x is not None for x in labels)} "
                    f"labelled) from {init or 'the shipped weights'}")  # fmt: skip
        record = finetune_bundle(
            self.bundle, images, self.models_dir / self.name / "model.pt", labels=labels, init=init,
            iterations=int(conf["max_iterations"]), lr=float(conf["lr"]) or None, max_pairs=int(conf["max_pairs"]),
            with_atlas=bool(conf["with_atlas"]), device=self.device,
        )  # fmt: skip
        logger.info(f"fine-tune done: loss {record['loss_before']:.4f} -> {record['loss_after']:.4f}")
        return record
