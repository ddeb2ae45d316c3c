"""One-line CLI over the bundles: ``python -m common register|batch|bundles``.

It runs the same ``configs/inference.json`` as ``python -m monai.bundle run`` (no second implementation); this
layer only finds the bundle, checks inputs up front and turns failures into one clear line naming the file and
the problem (exit code 2) instead of a traceback.

Examples::

    python -m common bundles
    python -m common register --bundle brain_mri_hybrid_loss --moving m.nii.gz --fixed f.nii.gz --out out/
    python -m common batch --bundle brain_mri_hybrid_loss --datalist pairs.json --out out/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import fire

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _bundle_dir(bundle: str) -> Path:
    p = Path(bundle)
    if not (p / "configs" / "inference.json").is_file():
        p = BUNDLES_DIR / bundle
    if not (p / "configs" / "inference.json").is_file():
        known = ", ".join(sorted(_names())) or "none found"
        raise CLIError(f"unknown bundle {bundle!r}: no configs/inference.json there (bundles: {known}).")
    return p


def _names() -> list[str]:
    if not BUNDLES_DIR.is_dir():
        return []
    return [p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "inference.json").is_file()]


def _check_weights(b: Path, ckpt: str | None) -> str:
    path = Path(ckpt) if ckpt else b / "models" / "model.pt"
    if not path.is_file():
        raise CLIError(
            f"{path}: no weights. Bundle {b.name} has no trained model yet (see {b / 'docs' / 'README.md'}), "
            "or pass --ckpt PATH."
        )
    return str(path)


def _check_output(out: str, overwrite: bool) -> Path:
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise CLIError(f"{o}: output path exists and is not a folder.")
    parent = o if o.exists() else next((p for p in o.parents if p.exists()), Path("."))
    import os

    if not os.access(parent, os.W_OK):
        raise CLIError(f"{parent}: output folder is not writable.")
    return o


def _run(b: Path, overrides: dict[str, Any]) -> None:
    from common.engines.bundle import run_bundle

    run_bundle(b, "inference", "infer", **overrides)


def _friendly(exc: BaseException) -> str:
    """The first non-wrapper message in the cause chain (MONAI wraps transform errors in RuntimeErrors
    "applying transform ...", whose causes carry our messages naming the file)."""
    seen: BaseException | None = exc
    while seen is not None and type(seen) is RuntimeError and seen.__cause__ is not None:
        seen = seen.__cause__
    seen = seen or exc
    return f"{type(seen).__name__}: {seen}"


def _guard(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, FileExistsError, ValueError, PermissionError, RuntimeError, KeyError) as exc:
        print(f"error: {_friendly(exc)}", file=sys.stderr)
        sys.exit(2)


def guarded(fn):
    """``fn`` for a fire CLI: the errors a user can cause print one line naming the file and exit 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return _guard(fn, *args, **kwargs)

    return wrapper


def _instance_overrides(b: Path, instance_iterations: Any) -> dict[str, Any]:
    """``{"instance_iterations": N}`` for the bundle's config, or {} for the default; clear errors otherwise."""
    if instance_iterations is None:
        return {}
    if isinstance(instance_iterations, bool) or not isinstance(instance_iterations, int) or instance_iterations < 0:
        raise CLIError(f"--instance_iterations must be an integer >= 0, got {instance_iterations!r}.")
    cfg = json.loads((b / "configs" / "inference.json").read_text())
    if "instance_iterations" not in cfg:
        raise CLIError(
            f"bundle {b.name} has no instance optimisation (no 'instance_iterations' in its inference.json)."
        )
    return {"instance_iterations": int(instance_iterations)}


def _register(
    bundle, moving, fixed, out, moving_label, fixed_label, device, overwrite, ckpt, instance_iterations
) -> None:
    b = _bundle_dir(bundle)
    weights = _check_weights(b, ckpt)
    extra = _instance_overrides(b, instance_iterations)
    for name, path in (
        ("moving", moving),
        ("fixed", fixed),
        ("moving_label", moving_label),
        ("fixed_label", fixed_label),
    ):
        if path is not None and not Path(path).is_file():
            raise CLIError(f"{path}: --{name} file not found.")
    o = _check_output(out, overwrite)
    from common.engines.inference import _pair_name
    from common.io.nifti import read_nifti

    for path in (moving, fixed):
        read_nifti(path)  # fails early with the file named (corrupt, NaN, wrong dimensionality)
    pair_dir = o / _pair_name({"moving_image": str(moving), "fixed_image": str(fixed)})
    if pair_dir.exists() and any(pair_dir.iterdir()) and not overwrite:
        raise CLIError(f"{pair_dir}: outputs exist; pass --overwrite to replace them.")
    _run(b, {
        "moving": str(moving), "fixed": str(fixed), "moving_label": moving_label, "fixed_label": fixed_label,
        "output_dir": str(o), "overwrite": bool(overwrite), "ckpt_path": weights,
        "device": f"$torch.device('{device}')", **extra,
    })  # fmt: skip
    metrics = json.loads((pair_dir / "metrics.json").read_text())
    print(json.dumps(metrics["metrics"], indent=2))
    print(f"outputs: {pair_dir}")


def register(
    bundle: str,
    moving: str,
    fixed: str,
    out: str,
    moving_label: str | None = None,
    fixed_label: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    ckpt: str | None = None,
    instance_iterations: int | None = None,
) -> None:
    """Register one pair with a bundle and write every output into ``out/<moving>_to_<fixed>/``.

    Args:
        bundle: bundle name (see ``python -m common bundles``) or path to a bundle folder.
        moving: moving image (NIfTI, any orientation/spacing).
        fixed: fixed image; outputs are written in its geometry.
        out: output folder.
        moving_label: optional moving label map, warped with a one-hot linear warp.
        fixed_label: optional fixed label map (Dice before/after goes into metrics.json).
        device: "cpu" or "cuda".
        overwrite: replace existing outputs.
        ckpt: weights to use instead of the bundle's models/model.pt.
        instance_iterations: refine the network's field for this pair with this many instance-optimisation steps
            per level, on the input grid (0: the network alone; default: the bundle's ``inference.json``).
    """
    _guard(_register, bundle, moving, fixed, out, moving_label, fixed_label, device, overwrite, ckpt,
           instance_iterations)  # fmt: skip


def _batch(bundle, datalist, out, section, device, overwrite, ckpt, instance_iterations) -> None:
    b = _bundle_dir(bundle)
    weights = _check_weights(b, ckpt)
    extra = _instance_overrides(b, instance_iterations)
    from common.engines.inference import pair_datalist

    pairs = pair_datalist(datalist=datalist, section=section)
    missing = [
        (i, k, v)
        for i, p in enumerate(pairs)
        for k, v in p.items()
        if k.endswith(("_image", "_label")) and not Path(v).is_file()
    ]
    if missing:
        i, k, v = missing[0]
        raise CLIError(f"{datalist}: entry {i} {k}: {v} not found ({len(missing)} missing file(s) in total).")
    o = _check_output(out, overwrite)
    _run(b, {
        "datalist": str(datalist), "datalist_section": section, "output_dir": str(o),
        "overwrite": bool(overwrite), "ckpt_path": weights, "device": f"$torch.device('{device}')", **extra,
    })  # fmt: skip
    print(f"{len(pairs)} pairs registered; summary: {o / 'summary.csv'}")


def batch(
    bundle: str,
    datalist: str,
    out: str,
    section: str = "test",
    device: str = "cpu",
    overwrite: bool = False,
    ckpt: str | None = None,
    instance_iterations: int | None = None,
) -> None:
    """Register every pair of a datalist JSON (``{"test": [{"moving_image": ..., "fixed_image": ...}]}``),
    with a progress bar, and write ``out/summary.csv`` with one row of metrics per pair.

    Args:
        bundle: bundle name or folder.
        datalist: JSON file; relative paths are relative to it.
        out: output folder.
        section: datalist section.
        device: "cpu" or "cuda".
        overwrite: replace existing outputs.
        ckpt: weights to use instead of the bundle's models/model.pt.
        instance_iterations: instance-optimisation steps per level for every pair (see ``register``).
    """
    _guard(_batch, bundle, datalist, out, section, device, overwrite, ckpt, instance_iterations)


def bundles() -> None:
    """List the bundles and whether their weights are trained."""
    from common.engines.bundle import bundle_metadata, is_trained

    rows = []
    for name in sorted(_names()):
        meta = bundle_metadata(BUNDLES_DIR / name)
        state = "trained" if is_trained(BUNDLES_DIR / name) else "no trained weights yet"
        rows.append(f"{name}  v{meta.get('version')}  {state}  — {meta.get('task', '')}")
    print("\n".join(rows))


def main() -> None:
    fire.Fire({"register": register, "batch": batch, "bundles": bundles})


if __name__ == "__main__":
    main()
