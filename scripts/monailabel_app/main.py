"""MONAI Label app: atlas segmentation and pair registration with the zoo's 3D registration bundles.

Start it from the label environment (``make label-env``), as printed in the README::

    .venv-label/bin/python -m monailabel.main start_server --app scripts/monailabel_app \
        --studies <folder of T1 .nii.gz> --conf models hybrid_loss   # or "all", or a comma-separated list

Models, per bundle (``<name>`` = bundle name without ``brain_mri_``):

* ``<name>`` (segmentation): registers the project's atlas (template T1 + 32 FreeSurfer structures, built from
  the ``deepmriprep`` PyPI wheel, see data/README.md) to the image and returns its labels as values 1..32 in the
  order of the names published in ``/info/`` (what 3D Slicer's MONAI Label module expects).
* ``register_<name>`` (others): registers the datastore image named by the parameter ``moving`` to the image and
  returns the warped moving image.

Each result's files (labels, warped image, the whole transform as an ITK displacement field in LPS mm, the affine
``.tfm``, a JSON record) are kept in ``<outputs_dir>/<model>/<image>/`` and served at
``/registration/outputs/<model>/<image>/<file>`` (the URLs are in the response's ``params["downloads"]``); the
atlas at ``/registration/atlas/{t1,labels,labels_freesurfer}``. Uploads that are not a usable 3D image or label
are refused (400 with the reason); unknown models and images get 404.

``--conf`` keys: ``models`` (default ``all``: every bundle under ``bundles/`` with a 3D ``inference.json`` and
trained weights), ``device`` (default ``cpu``), ``bundles_dir`` (default the repository's ``bundles/``),
``outputs_dir`` (default ``<studies>/registration_outputs``), ``outputs_max_gb`` (default 2: the oldest results
are deleted beyond it), ``models_dir`` (default ``<studies>/registration_models``: fine-tuned weights).

Training (``/train/<name>``, Slicer's *Train*): fine-tunes the bundle's network on the datastore's images
(``lib/train.py``); the model serves the new weights afterwards. Active learning: MONAI Label's ``random`` and
``first`` strategies (``/activelearning/<strategy>``, Slicer's *Next Sample*).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

# MONAI Label puts this folder on sys.path while it loads main.py (so `lib` is found); `common` comes from the
# label environment's install of this repository (make label-env: pip install -e .)
from lib.infer import AtlasRegistrationInfer, PairRegistrationInfer, bad_request, find_bundles
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp

APP_DIR = Path(__file__).resolve().parent
REPO = APP_DIR.parents[1]

from common.engines.label_app import check_image_upload, check_label_upload  # noqa: E402
from common.io.nifti import ImageReadError  # noqa: E402

logger = logging.getLogger(__name__)


class CheckedDatastore(LocalDatastore):
    """The local datastore, refusing uploads that are not a usable 3D image / a label map on the image's grid."""

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        try:
            check_image_upload(image_filename, name=image_id or None)
        except ImageReadError as exc:
            raise bad_request(str(exc)) from None
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image = self.get_image_uri(image_id)
        if not image:
            raise bad_request(f"label for {image_id!r}: no such image in the datastore.", 404)
        try:
            check_label_upload(label_filename, image, name=f"label of {image_id}")
        except ImageReadError as exc:
            raise bad_request(str(exc)) from None
        return super().save_label(image_id, label_filename, label_tag, label_info)


class RegistrationZooApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.bundles_dir = Path(conf.get("bundles_dir", str(REPO / "bundles")))
        self.device = conf.get("device", "cpu")
        self.bundles = find_bundles(self.bundles_dir, conf.get("models", "all"))
        local = not str(studies).startswith(("http://", "https://"))
        default_out = Path(studies) / "registration_outputs" if local else Path(app_dir) / "registration_outputs"
        self.outputs_root = Path(conf.get("outputs_dir", str(default_out))).resolve()
        self.outputs_max_bytes = int(float(conf.get("outputs_max_gb", 2)) * 1024**3)
        default_models = Path(studies) / "registration_models" if local else Path(app_dir) / "registration_models"
        self.models_dir = Path(conf.get("models_dir", str(default_models))).resolve()
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MONAI registration zoo",
            description="Atlas segmentation and pair registration with the zoo's registration bundles.",
            version="0.2.0",
        )
        self._install_routes()

    def on_init_complete(self):
        super().on_init_complete()
        # load ITK and the bundle machinery now, not during the first click (about 8 s)
        threading.Thread(target=self._warm_up, name="registration-warm-up", daemon=True).start()

    @staticmethod
    def _warm_up() -> None:
        from common.engines.atlas import warm_up

        logger.info(f"registration zoo: warmed up in {warm_up():.1f} s")

    def _install_routes(self) -> None:
        try:
            import monailabel.app as server_module
        except Exception as exc:  # not under the server (e.g. the app used as a library)
            logger.info(f"no MONAI Label server to extend ({exc})")
            return
        from lib.routes import install

        install(server_module.app)

    def init_datastore(self):
        if str(self.studies).startswith(("http://", "https://")):
            return super().init_datastore()
        from monailabel.config import settings

        return CheckedDatastore(self.studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)  # fmt: skip

    def init_infers(self):
        infers = {}
        args = (self.outputs_root, self.outputs_max_bytes, self.device)
        for name, bundle in self.bundles.items():
            infers[name] = AtlasRegistrationInfer(bundle, name, *args)
            infers[f"register_{name}"] = PairRegistrationInfer(bundle, f"register_{name}", *args)
            for task in (infers[name], infers[f"register_{name}"]):
                task.models_dir = self.models_dir
            logger.info(f"+++ serving bundle {bundle} as models '{name}' and 'register_{name}'")
        return infers

    def init_trainers(self):
        from lib.train import FineTuneTrain

        return {
            name: FineTuneTrain(bundle, name, self.models_dir, self.device) for name, bundle in self.bundles.items()
        }

    def init_strategies(self):
        from monailabel.tasks.activelearning.first import First
        from monailabel.tasks.activelearning.random import Random

        return {"random": Random(), "first": First()}

    def init_scoring_methods(self):
        return {}

    def infer(self, request, datastore=None):
        """MONAI Label's infer with 404 for unknown models/images and the ``moving`` parameter resolved."""
        model = request.get("model")
        if model not in self._infers:
            raise bad_request(f"no model {model!r}; this server has {sorted(self._infers)}.", 404)
        request = dict(request)
        ds = datastore or self.datastore()
        request["image_id"] = request.get("image")
        self._resolve(request, "image", ds)
        if model.startswith("register_"):
            if not request.get("moving"):
                raise bad_request(f"{model} needs the parameter 'moving': the datastore id of the moving image.")
            request["moving_id"] = request["moving"]
            self._resolve(request, "moving", ds)
        return super().infer(request, datastore)

    @staticmethod
    def _resolve(request: dict[str, Any], key: str, datastore: Any) -> None:
        value = request.get(key)
        if not isinstance(value, str) or not value:
            raise bad_request(f"no {key} given.")
        if key == "image" and os.path.exists(value):  # an upload's temporary file (MONAI Label's own path)
            return
        try:
            uri = datastore.get_image_uri(value)
        except Exception:  # a remote datastore (DICOMweb) answers an unknown id with an HTTP error
            uri = ""
        if not uri:
            raise bad_request(f"{key} {value!r} is not an image of the datastore.", 404)
        if key != "image":  # MONAI Label resolves the image id itself
            request[key] = uri

    def atlas_file(self, which: str) -> Path:
        """The atlas T1, its labels in the served values (1..32), or in FreeSurfer codes (written once)."""
        from common.engines.atlas import default_atlas
        from common.engines.label_app import to_slicer_values
        from common.io.nifti import read_nifti, write_nifti

        t1, labels = default_atlas(1)
        if which == "t1":
            return Path(t1)
        if which == "labels_freesurfer":
            return Path(labels)
        path = self.outputs_root / "atlas_labels_1to32.nii.gz"
        if not path.is_file():
            arr, aff = read_nifti(labels, ndim=3, dtype=None)
            self.outputs_root.mkdir(parents=True, exist_ok=True)
            write_nifti(to_slicer_values(arr), aff, path)
        return path


if os.environ.get("MONAI_REG_ZOO_APP_DEBUG"):
    logging.basicConfig(level=logging.INFO)
