"""Running a bundle's config through MONAI's ``ConfigWorkflow`` (one place for the CLI, the demo and scripts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["bundle_workflow", "run_bundle"]


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
