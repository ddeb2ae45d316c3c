"""MONAI Label app: atlas-based brain segmentation with the zoo's 3D registration bundles.

Start it from the label environment (``make label-env``)::

    .venv-label/bin/monailabel start_server --app scripts/monailabel_app --studies <folder of T1 .nii.gz> \
        --conf models hybrid_loss            # or "all", or a comma-separated list of bundle names

Each served model registers the project's atlas (template T1 + 32 FreeSurfer-coded structures, built from the
``deepmriprep`` PyPI wheel, see data/README.md) to the requested image and returns the propagated atlas labels;
the displacement (ITK field, LPS mm) and the affine (.tfm) are written next to them under
``<app>/outputs/<model>/<image id>/`` and named in the response's params. In 3D Slicer's MONAI Label module the
models appear as segmentation models.

``--conf`` keys: ``models`` (default ``all``: every bundle under ``bundles/`` with a 3D ``inference.json`` and
trained weights), ``device`` (default ``cpu``; ``cuda`` when available), ``bundles_dir`` (default the
repository's ``bundles/``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
REPO = APP_DIR.parents[1]
for p in (str(REPO), str(APP_DIR)):
    if p not in sys.path:
        sys.path.insert(0, p)

from lib.infer import AtlasRegistrationInfer, find_bundles  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402

logger = logging.getLogger(__name__)


class RegistrationZooApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.bundles_dir = Path(conf.get("bundles_dir", str(REPO / "bundles")))
        self.device = conf.get("device", "cpu")
        self.bundles = find_bundles(self.bundles_dir, conf.get("models", "all"))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MONAI registration zoo: atlas segmentation",
            description="Registers a brain atlas to the image with a registration bundle and returns its labels.",
            version="0.1.0",
        )

    def init_infers(self):
        out_root = Path(self.app_dir) / "outputs"
        infers = {}
        for name, bundle in self.bundles.items():
            infers[name] = AtlasRegistrationInfer(bundle, out_root / name, device=self.device)
            logger.info(f"+++ serving bundle {bundle} as model '{name}'")
        return infers

    def init_trainers(self):
        return {}

    def init_strategies(self):
        return {}

    def init_scoring_methods(self):
        return {}


if os.environ.get("MONAI_REG_ZOO_APP_DEBUG"):
    logging.basicConfig(level=logging.INFO)
