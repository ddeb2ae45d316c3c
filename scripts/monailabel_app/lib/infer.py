"""The MONAI Label inference task of the app: atlas registration with one bundle (see ``main.py``)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from common.data.brain.labels import BRAIN_EVAL_LABELS
from common.engines.atlas import atlas_segment
from common.engines.bundle import bundle_metadata, is_trained, trained_bundles

logger = logging.getLogger(__name__)


def _model_name(bundle: Path) -> str:
    return bundle.name[len("brain_mri_") :] if bundle.name.startswith("brain_mri_") else bundle.name


def find_bundles(bundles_dir: Path, models: str = "all") -> dict[str, Path]:
    """``{model name: bundle folder}`` of the 3D brain bundles with trained weights, filtered by ``models``.

    Model names are the bundle names without the ``brain_mri_`` prefix (either spelling is accepted in
    ``models``). Raises ``ValueError`` naming unknown or untrained bundles.
    """
    available = {_model_name(b): b for b in trained_bundles(bundles_dir, dims=3)}
    untrained = [b.parent.parent.name for b in sorted(Path(bundles_dir).glob("*/configs/inference.json"))
                 if not is_trained(b.parent.parent)]  # fmt: skip
    if models.strip() in ("", "all"):
        if not available:
            raise ValueError(f"monailabel app: no 3D bundle with trained weights under {bundles_dir} "
                             f"(without weights: {untrained}).")  # fmt: skip
        return available
    chosen = {}
    for raw in models.split(","):
        name = raw.strip()
        key = _model_name(Path(name))
        if key not in available:
            raise ValueError(f"monailabel app: --conf models: '{name}' is not a 3D bundle with trained weights under "
                             f"{bundles_dir}; available: {sorted(available)}, without weights: {untrained}.")  # fmt: skip
        chosen[key] = available[key]
    return chosen


class AtlasRegistrationInfer(InferTask):
    """Register the atlas to ``request["image"]`` with a bundle; the result is the propagated label map."""

    def __init__(self, bundle: Path, out_root: Path, device: str = "cpu"):
        meta = bundle_metadata(bundle)
        labels = {name: int(code) for code, name in BRAIN_EVAL_LABELS.items()}
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=3,
            description=f"Atlas segmentation by registration with {meta.get('name', bundle.name)} "
            f"v{meta.get('version', '?')} (skull-stripped T1).",
            config={"device": device, "instance_iterations": 0},
        )
        self.bundle, self.out_root, self.device = Path(bundle), Path(out_root), device

    def is_valid(self) -> bool:
        return (self.bundle / "models" / "model.pt").is_file()

    def _overrides(self, request: dict[str, Any]) -> dict[str, Any]:
        overrides: dict[str, Any] = {}
        iters = request.get("instance_iterations", 0)
        try:
            iters = int(iters)
        except (TypeError, ValueError):
            raise MONAILabelException(MONAILabelError.INVALID_INPUT,
                                      f"instance_iterations must be an integer, got {iters!r}.") from None  # fmt: skip
        if iters:
            cfg = json.loads((self.bundle / "configs" / "inference.json").read_text())
            if "instance_iterations" not in cfg:
                raise MONAILabelException(MONAILabelError.INVALID_INPUT,
                                          f"{self.bundle.name} has no instance optimisation; use 0.")  # fmt: skip
            overrides["instance_iterations"] = iters
        return overrides

    def __call__(self, request: dict[str, Any]):
        image = request.get("image")
        if not isinstance(image, str) or not Path(image).is_file():
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"image {image!r} is not a file.")
        device = str(request.get("device", self.device) or self.device)
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                device = "cpu"
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(image).name.split(".")[0]) or "image"
        out = self.out_root / stem
        t0 = time.perf_counter()
        try:
            result = atlas_segment(image, self.bundle, out, device=device, overwrite=True, **self._overrides(request))
        except MONAILabelException:
            raise
        except (ValueError, OSError, RuntimeError) as exc:  # ImageReadError is a ValueError
            logger.error(f"atlas registration failed for {image}: {exc}")
            raise MONAILabelException(MONAILabelError.INFERENCE_ERROR, f"{Path(image).name}: {exc}") from exc
        # MONAI Label moves/deletes the returned file: hand it a copy, keep ours next to the displacement
        fd, tmp = tempfile.mkstemp(suffix=".nii.gz", prefix="atlas_labels_")
        os.close(fd)
        shutil.copyfile(result["labels"], tmp)
        params = {
            "bundle": self.bundle.name,
            "labels_file": result["labels"],
            "displacement": result["displacement"],
            "affine": result["affine"],
            "latencies": {
                "affine": result["affine_seconds"],
                "bundle": result["bundle_seconds"],
                "total": round(time.perf_counter() - t0, 2),
            },  # fmt: skip
        }
        return tmp, params
