"""The MONAI Label inference tasks of the app (see ``main.py``).

* :class:`AtlasRegistrationInfer` (model ``<bundle>``, a segmentation model in Slicer): registers the atlas to
  the image and returns the propagated labels in the values Slicer's module expects (1..32, see
  :mod:`common.engines.label_app`); ``label_values: "freesurfer"`` returns FreeSurfer codes instead.
* :class:`PairRegistrationInfer` (model ``register_<bundle>``): registers the datastore image ``moving`` (a
  request parameter) to the requested image and returns the warped moving image.

Both keep their outputs (transform included) in ``<outputs root>/<model>/<image>/`` and name their download URLs
(``/registration/outputs/...``, see ``routes.py``) in the response's params. User errors raise
``fastapi.HTTPException`` with a 4xx status and the reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from common.data.brain.labels import BRAIN_EVAL_LABELS
from common.engines.atlas import atlas_segment, register_pair
from common.engines.bundle import bundle_metadata, is_trained, trained_bundles
from common.engines.label_app import prune_outputs, result_folder_name, slicer_label_names, to_slicer_values
from common.io.nifti import ImageReadError, read_nifti, write_nifti

logger = logging.getLogger(__name__)

#: a request's instance-optimisation steps at most (one request holds its model for the whole run)
MAX_INSTANCE_ITERATIONS = 2000

#: result folder -> Future of its transform files being written (``run``; a download waits for it)
PENDING: dict[str, Any] = {}

#: files a client may download from a result folder (``routes.py``)
DOWNLOADABLE = ("labels.nii.gz", "warped.nii.gz", "displacement_itk.nii.gz", "affine.tfm", "atlas.json",
                "registration.json")  # fmt: skip


def model_name(bundle: Path) -> str:
    return bundle.name[len("brain_mri_") :] if bundle.name.startswith("brain_mri_") else bundle.name


def find_bundles(bundles_dir: Path, models: str = "all") -> dict[str, Path]:
    """``{model name: bundle folder}`` of the 3D brain bundles with trained weights, filtered by ``models``.

    Model names are the bundle names without the ``brain_mri_`` prefix (either spelling is accepted in
    ``models``). Raises ``ValueError`` naming unknown or untrained bundles.
    """
    available = {model_name(b): b for b in trained_bundles(bundles_dir, dims=3)}
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
        key = model_name(Path(name))
        if key not in available:
            raise ValueError(f"monailabel app: --conf models: '{name}' is not a 3D bundle with trained weights under "
                             f"{bundles_dir}; available: {sorted(available)}, without weights: {untrained}.")  # fmt: skip
        chosen[key] = available[key]
    return chosen


def _title(bundle: Path) -> str:
    """``<bundle name> v<version>`` from the bundle's metadata (the model descriptions in ``/info/``)."""
    meta = bundle_metadata(bundle)
    return f"{meta.get('name', bundle.name)} v{meta.get('version', '?')}"


def bad_request(message: str, status: int = 400) -> HTTPException:
    logger.warning(f"refused ({status}): {message}")
    return HTTPException(status_code=status, detail=message)


class _BundleTask(InferTask):
    """Shared parts: overrides from the request, one inference at a time per model, output folders."""

    def __init__(self, bundle: Path, name: str, out_root: Path, max_bytes: int, device: str, **kwargs: Any):
        super().__init__(dimension=3, config={"device": device, "instance_iterations": 0}, **kwargs)
        self.bundle, self.name, self.out_root = Path(bundle), name, Path(out_root)
        self.max_bytes, self.device = max_bytes, device
        self.models_dir: Path | None = None  # set by the app: fine-tuned weights of model_name(bundle) live there
        self._lock = threading.Lock()

    def weights(self) -> Path:
        """The weights served: the last fine-tune's (``<models_dir>/<model>/model.pt``), else the bundle's."""
        from .train import fine_tuned_weights

        tuned = fine_tuned_weights(self.models_dir, model_name(self.bundle)) if self.models_dir else None
        return tuned or self.bundle / "models" / "model.pt"

    def is_valid(self) -> bool:
        return (self.bundle / "models" / "model.pt").is_file()

    def overrides(self, request: dict[str, Any]) -> dict[str, Any]:
        iters = request.get("instance_iterations", 0)
        try:
            iters = int(iters)
        except (TypeError, ValueError):
            raise bad_request(f"instance_iterations must be an integer, got {iters!r}.") from None
        if not 0 <= iters <= MAX_INSTANCE_ITERATIONS:
            raise bad_request(f"instance_iterations must be 0..{MAX_INSTANCE_ITERATIONS}, got {iters}.")
        overrides: dict[str, Any] = {"ckpt_path": str(self.weights())}
        if not iters:
            return overrides
        cfg = json.loads((self.bundle / "configs" / "inference.json").read_text())
        if "instance_iterations" not in cfg:
            raise bad_request(f"{self.bundle.name} has no instance optimisation; use instance_iterations 0.")
        return {**overrides, "instance_iterations": iters}

    def device_of(self, request: dict[str, Any]) -> str:
        """``cpu`` or an available ``cuda[:n]`` (CUDA asked for on a machine without it falls back to the CPU)."""
        import torch

        device = str(request.get("device", self.device) or self.device)
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise bad_request(f"device must be 'cpu' or 'cuda[:n]', got {device!r}.") from None
        if parsed.type == "cuda" and not torch.cuda.is_available():
            return "cpu"
        if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise bad_request(f"device {device!r}: this server has {torch.cuda.device_count()} GPU(s).")
        if parsed.type not in ("cpu", "cuda"):
            raise bad_request(f"device must be 'cpu' or 'cuda[:n]', got {device!r}.")
        return device

    def image_path(self, request: dict[str, Any], key: str = "image") -> Path:
        image = request.get(key)
        if not isinstance(image, str) or not image or not Path(image).is_file():
            raise bad_request(f"{key} {request.get(key + '_id', image)!r} is not an image of the datastore.", 404)
        return Path(image)

    def out_dir(self, image_id: str) -> Path:
        """``<outputs root>/<model>/<folder>``: one folder per datastore id (:func:`result_folder_name`)."""
        return self.out_root / self.name / result_folder_name(image_id)

    def run(self, fn: Any, image: Path, out: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """``fn(*args, out, defer_transform=True, **kwargs)`` under the model's lock; bad images -> 400.

        The transform files are written in the background (:data:`PENDING` holds the writer's Future per result
        folder; a download waits for it); the outputs root is pruned once they are written.
        """
        with self._lock:
            try:
                result = fn(*args, out, defer_transform=True, **kwargs)
            except ImageReadError as exc:
                raise bad_request(str(exc).replace(str(image.parent) + os.sep, "")) from None
            except (ValueError, OSError, RuntimeError) as exc:
                logger.error(f"{self.name} failed for {image}: {exc}")
                raise HTTPException(status_code=500, detail=f"{self.name}: {image.name}: {exc}") from exc
        pending = result.pop("pending")
        PENDING[str(out.resolve())] = pending
        pending.add_done_callback(lambda f: self._written(f, out))
        return result

    def _written(self, future: Any, out: Path) -> None:
        """After a result's transform files: log a failure; prune finished results beyond the cap."""
        if future.exception() is not None:
            logger.error(f"{self.name}: writing the transform of {out.name} failed: {future.exception()}")
        busy = {k for k, f in list(PENDING.items()) if not f.done()}
        prune_outputs(self.out_root, self.max_bytes, keep=out, busy=busy)

    def returned_file(self, prefix: str) -> str:
        """A new file for MONAI Label to send and delete, in the app's own folder: a client on the same machine
        saves the answer under ``<its tmpdir>/<same name>`` (``/tmp`` by default), which a file in ``/tmp`` would
        have the server delete under the client."""
        folder = self.out_root / ".returned"
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".nii.gz", prefix=prefix, dir=folder)
        os.close(fd)
        return tmp

    def urls(self, out: Path, result: dict[str, Any]) -> dict[str, str]:
        """Download URLs of a result's files (the transform's may still be being written: a download waits)."""
        rel = out.relative_to(self.out_root).as_posix()
        names = [Path(v).name for k, v in result.items() if not k.endswith("seconds")]
        return {n: f"/registration/outputs/{rel}/{n}" for n in names if n in DOWNLOADABLE}


class AtlasRegistrationInfer(_BundleTask):
    """Register the atlas to ``request["image"]`` with a bundle; the result is the propagated label map."""

    def __init__(self, bundle: Path, name: str, out_root: Path, max_bytes: int, device: str = "cpu"):
        super().__init__(bundle, name, out_root, max_bytes, device, type=InferType.SEGMENTATION,
                         labels=slicer_label_names(),
                         description=f"Atlas segmentation by registration with {_title(bundle)} (skull-stripped T1).")  # fmt: skip

    def __call__(self, request: dict[str, Any]):
        t0 = time.perf_counter()
        image = self.image_path(request)
        values = str(request.get("label_values", "slicer")).lower()
        if values not in ("slicer", "freesurfer"):
            raise bad_request(f"label_values must be 'slicer' (1..32) or 'freesurfer', got {values!r}.")
        out = self.out_dir(str(request.get("image_id") or image.name))
        overrides, device = self.overrides(request), self.device_of(request)
        r = self.run(atlas_segment, image, out, image, self.bundle, device=device, overwrite=True, **overrides)
        t1 = time.perf_counter()
        labels, affine = read_nifti(r["labels"], ndim=3, dtype=None)
        if values == "slicer":
            labels = to_slicer_values(labels)
        # MONAI Label moves/deletes the returned file: hand it a copy, keep ours next to the transform
        tmp = self.returned_file("atlas_labels_")
        write_nifti(labels.astype("uint8" if values == "slicer" else "int16"), affine, tmp)
        names = slicer_label_names()
        params = {
            "bundle": self.bundle.name,
            "weights": overrides["ckpt_path"],
            "label_values": values,
            "label_names": names if values == "slicer" else {n: c for c, n in BRAIN_EVAL_LABELS.items()},
            "label_codes": {n: c for c, n in BRAIN_EVAL_LABELS.items()},
            "downloads": {
                **self.urls(out, r),
                "atlas_t1": "/registration/atlas/t1",
                "atlas_labels": "/registration/atlas/labels",
            },  # fmt: skip
            "latencies": {
                "affine": r["affine_seconds"],
                "bundle": r["bundle_seconds"],
                "label_file": round(time.perf_counter() - t1, 2),
                "total": round(time.perf_counter() - t0, 2),
            },  # fmt: skip
        }
        return tmp, params


class PairRegistrationInfer(_BundleTask):
    """Register the datastore image ``moving`` (request parameter) to ``request["image"]``; returns it warped."""

    def __init__(self, bundle: Path, name: str, out_root: Path, max_bytes: int, device: str = "cpu"):
        super().__init__(bundle, name, out_root, max_bytes, device, type=InferType.OTHERS, labels=[],
                         description=f"Registers the datastore image `moving` (a parameter) to this image with "
                         f"{_title(bundle)}; returns the warped moving image.")  # fmt: skip
        self._config["moving"] = ""

    def __call__(self, request: dict[str, Any]):
        t0 = time.perf_counter()
        fixed = self.image_path(request)
        moving = self.image_path(request, "moving")
        fixed_id, moving_id = str(request.get("image_id") or fixed.name), str(request.get("moving_id") or moving.name)
        out = self.out_root / self.name / f"{result_folder_name(moving_id)}_to_{result_folder_name(fixed_id)}"
        overrides, device = self.overrides(request), self.device_of(request)
        r = self.run(register_pair, fixed, out, moving, fixed, self.bundle, device=device, overwrite=True,
                     **overrides)  # fmt: skip
        tmp = self.returned_file("warped_")
        shutil.copyfile(r["warped"], tmp)
        params = {
            "bundle": self.bundle.name,
            "weights": overrides["ckpt_path"],
            "moving": request.get("moving_id"),
            "fixed": request.get("image_id"),
            "downloads": self.urls(out, r),
            "latencies": {
                "affine": r["affine_seconds"],
                "bundle": r["bundle_seconds"],
                "total": round(time.perf_counter() - t0, 2),
            },  # fmt: skip
        }
        return tmp, params
