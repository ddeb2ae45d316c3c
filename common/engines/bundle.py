"""Running a bundle's config through MONAI's ``ConfigWorkflow`` (one place for the CLI, the demo and scripts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["bundle_workflow", "run_bundle", "bundle_metadata", "bundle_dims", "is_trained", "trained_bundles"]


def bundle_metadata(bundle: str | Path) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json``."""
    return json.loads((Path(bundle) / "configs" / "metadata.json").read_text())


def bundle_dims(bundle: str | Path) -> int:
    """Spatial dimensions of the bundle's network input (2 or 3), from its metadata."""
    inputs = bundle_metadata(bundle).get("network_data_format", {}).get("inputs", {})
    return len(next(iter(inputs.values()), {}).get("spatial_shape", []))


def is_trained(bundle: str | Path) -> bool:
    """The metadata says ``weights_trained`` and ``models/model.pt`` exists."""
    b = Path(bundle)
    return bool(bundle_metadata(b).get("weights_trained", False)) and (b / "models" / "model.pt").is_file()


def trained_bundles(bundles_dir: str | Path, dims: int | None = None) -> list[Path]:
    """Bundle folders under ``bundles_dir`` with trained weights (optionally only ``dims``-D ones), by name."""
    found = []
    for meta in sorted(Path(bundles_dir).glob("*/configs/metadata.json")):
        b = meta.parent.parent
        if is_trained(b) and (dims is None or bundle_dims(b) == dims):
            found.append(b)
    return found


def bundle_workflow(
    bundle: str | Path, configs: str | list[str] = "inference", workflow_type: str = "infer", **overrides: Any
):
    """A ``ConfigWorkflow`` for ``bundles/<name>/configs/<config>.json`` (several configs are merged in order),
    with the bundle's metadata and logging config and ``bundle_root`` set; ``overrides`` replace config ids."""
    from monai.bundle import ConfigWorkflow

    b = Path(bundle)
    names = [configs] if isinstance(configs, str) else list(configs)
    files = [str(b / "configs" / f"{n}.json") for n in names]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(b / "configs" / "metadata.json"),
        logging_file=str(b / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(b),
        **overrides,
    )


def run_bundle(
    bundle: str | Path, configs: str | list[str] = "inference", workflow_type: str = "infer", **overrides: Any
):
    """Initialise, run and finalise :func:`bundle_workflow`; returns the workflow."""
    wf = bundle_workflow(bundle, configs, workflow_type, **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf
