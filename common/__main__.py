"""One-line CLI over the bundles: ``python -m common register|batch|bundles``.

It runs the same ``configs/inference.json`` as ``python -m monai.bundle run`` (no second implementation); this
layer only finds the bundle, checks inputs up front and turns failures into one clear line naming the file and
the problem (exit code 2) instead of a traceback.

Examples::

    python -m common bundles
    python -m common register --bundle brain_mri_hybrid_loss --moving m.nii.gz --fixed f.nii.gz --out out/
    python -m common batch --bundle brain_mri_hybrid_loss --datalist pairs.json --out out/
    python -m common download --name brain_mri_hybrid_loss --index https://host/release/model_info.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import fire

from common.errors import USER_ERRORS, friendly

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
    if not parent.is_dir():
        raise CLIError(f"{o}: cannot create the output folder: {parent} is a file, not a folder.")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"{parent}: output folder is not writable.")
    return o


def _check_device(device: str) -> None:
    """``--device``: a torch device this machine has (one line otherwise, not torch's assertion)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CLIError(f"--device {device!r}: not a torch device; use cpu or cuda (cuda:N).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: no CUDA GPU is available on this machine (or torch was built without "
                       "CUDA); use --device cpu.")  # fmt: skip
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CLIError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {device}: only cpu and cuda are supported.")


def _run(b: Path, overrides: dict[str, Any]) -> None:
    from common.engines.bundle import run_bundle

    run_bundle(b, "inference", "infer", **overrides)


def _guard(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (*USER_ERRORS, RuntimeError) as exc:
        print(f"error: {friendly(exc)}", file=sys.stderr)
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


def _output_overrides(outputs: Any, compression: Any) -> dict[str, Any]:
    """``--outputs`` / ``--compression`` as config overrides (checked here: one line, not a config traceback)."""
    from common.engines.outputs import parse_outputs

    extra: dict[str, Any] = {}
    if outputs is not None:
        try:
            extra["outputs"] = list(parse_outputs(outputs))
        except ValueError as exc:
            raise CLIError(f"--{exc}") from None
    if compression is not None:
        if isinstance(compression, bool) or not isinstance(compression, int) or not 0 <= compression <= 9:
            raise CLIError(f"--compression must be a gzip level 0-9, got {compression!r}.")
        extra["output_compression"] = int(compression)
    return extra


def _register(
    bundle, moving, fixed, out, moving_label, fixed_label, device, overwrite, ckpt, instance_iterations, outputs,
    compression,
) -> None:  # fmt: skip
    b = _bundle_dir(bundle)
    weights = _check_weights(b, ckpt)
    extra = {**_instance_overrides(b, instance_iterations), **_output_overrides(outputs, compression)}
    if "labels" in extra.get("outputs", ()) and moving_label is None:
        raise CLIError("--outputs labels needs --moving_label (the label map to warp).")
    _check_device(device)
    for name, path in (
        ("moving", moving),
        ("fixed", fixed),
        ("moving_label", moving_label),
        ("fixed_label", fixed_label),
    ):
        if path is not None and not Path(path).is_file():
            raise CLIError(f"{path}: --{name} file not found.")
    o = _check_output(out, overwrite)
    from common.io.files import pair_output_name
    from common.io.nifti import read_label_map, read_nifti

    for path in (moving, fixed):
        read_nifti(path)  # fails early with the file named (corrupt, NaN, wrong dimensionality)
    for path in (moving_label, fixed_label):
        if path is not None:
            read_label_map(path)  # non-integer labels are refused, not rounded
    pair_dir = o / pair_output_name({"moving_image": str(moving), "fixed_image": str(fixed)})
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
    outputs: str | None = None,
    compression: int | None = None,
) -> None:
    """Register one pair with a bundle and write its outputs into ``out/<moving>_to_<fixed>/``.

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
        outputs: comma-separated outputs to write (default all): warped, labels, l2r, itk, qc, metrics, inverse,
            extras (see ``common.engines.outputs.OUTPUTS``); e.g. ``--outputs warped,itk`` for a quick look.
        compression: gzip level 0-9 for every file (default: displacement fields 0, images 1).
    """
    _guard(_register, bundle, moving, fixed, out, moving_label, fixed_label, device, overwrite, ckpt,
           instance_iterations, outputs, compression)  # fmt: skip


def _check_pair_files(pair: dict[str, Any]) -> None:
    """Read every file of a datalist entry (raises ImageReadError naming the file and the problem)."""
    from common.io.nifti import read_label_map, read_nifti

    for key in ("moving_image", "fixed_image"):
        read_nifti(pair[key])
    for key in ("moving_label", "fixed_label"):
        if pair.get(key):
            read_label_map(pair[key])


def _register_all(run: Any, todo: list[tuple[str, dict[str, Any]]], out: Path, failed: dict[str, str]) -> None:
    """``run(todo)`` in one go; when a pair fails (or is left without outputs), the pairs not finished are run one at
    a time, each failure recorded in ``failed`` (pair name -> one-line message)."""

    def stamp(name: str) -> tuple[int, int] | None:
        st = (out / name / "metrics.json").stat() if (out / name / "metrics.json").is_file() else None
        return None if st is None else (st.st_ino, st.st_mtime_ns)

    before = {name: stamp(name) for name, _ in todo}  # outputs of an earlier run (--overwrite) do not count
    finished = lambda name: stamp(name) not in (None, before[name])  # noqa: E731

    try:
        run(todo)
        unfinished = [n for n, _ in todo if not finished(n)]
        if unfinished:
            raise RuntimeError(f"{', '.join(unfinished)}: no outputs")  # never a pair silently lost
    except (*USER_ERRORS, RuntimeError):
        for name, pair in todo:
            if finished(name):
                continue
            try:
                run([(name, pair)])
            except (*USER_ERRORS, RuntimeError) as exc:
                failed[name] = friendly(exc)


def _batch(
    bundle, datalist, out, section, device, overwrite, ckpt, instance_iterations, resume, outputs, compression, pipeline
) -> int:
    b = _bundle_dir(bundle)
    weights = _check_weights(b, ckpt)
    extra = {**_instance_overrides(b, instance_iterations), **_output_overrides(outputs, compression)}
    _check_device(device)
    from common.engines.pair_loading import pair_datalist
    from common.engines.summary import merge_summary
    from common.io.files import pair_output_name

    pairs = pair_datalist(datalist=datalist, section=section)
    o = _check_output(out, overwrite)
    names = [pair_output_name(p, p.get("id")) for p in pairs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise CLIError(f"{datalist}: two pairs map to the output folder {o / dup} (same file names in different "
                       "folders?); give each datalist entry a unique 'id'.")  # fmt: skip
    failed: dict[str, str] = {}
    todo = []
    for name, pair in zip(names, pairs):
        if resume and (o / name / "metrics.json").is_file():
            continue  # finished by an earlier run
        if not resume and not overwrite and (o / name).is_dir() and any((o / name).iterdir()):
            raise CLIError(f"{o / name}: outputs exist; pass --resume to skip finished pairs or --overwrite.")
        try:
            _check_pair_files(pair)
        except USER_ERRORS as exc:
            failed[name] = friendly(exc)
            continue
        todo.append((name, pair))
    skipped = len(pairs) - len(todo) - len(failed)

    def run(entries: list[tuple[str, dict[str, Any]]]) -> None:
        o.mkdir(parents=True, exist_ok=True)
        listing = o / f".batch-{os.getpid()}.json"
        listing.write_text(json.dumps({"test": [p for _, p in entries]}))
        try:
            _run(b, {
                "datalist": str(listing), "datalist_section": "test", "output_dir": str(o),
                "overwrite": bool(overwrite), "ckpt_path": weights, "device": f"$torch.device('{device}')", **extra,
                "postprocessing#pipeline": bool(pipeline) and len(entries) > 1,
            })  # fmt: skip
        finally:
            listing.unlink(missing_ok=True)

    if todo:
        _register_all(run, todo, o, failed)
    if failed:
        merge_summary(o / "summary.csv", [{"name": n, "bundle": b.name, "status": f"failed: {m}"}
                                          for n, m in failed.items()])  # fmt: skip
        for name, message in failed.items():
            print(f"error: pair {name}: {message}", file=sys.stderr)
    done = len(todo) - len([n for n, _ in todo if n in failed])
    print(f"{done} pairs registered, {skipped} already done, {len(failed)} failed; summary: {o / 'summary.csv'}")
    return 1 if failed else 0


def batch(
    bundle: str,
    datalist: str,
    out: str,
    section: str = "test",
    device: str = "cpu",
    overwrite: bool = False,
    ckpt: str | None = None,
    instance_iterations: int | None = None,
    resume: bool = False,
    outputs: str | None = None,
    compression: int | None = None,
    pipeline: bool = False,
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
        resume: skip the pairs whose outputs are complete in ``out`` (an earlier, interrupted or failed batch).
        outputs: comma-separated outputs to write for every pair (see ``register``).
        compression: gzip level 0-9 for every file (see ``register``).
        pipeline: write each pair's outputs in the background while the next pair is read and registered (same
            files; one pair's outputs in flight at a time): faster when the network dominates (lumir_cascade at 1 mm:
            4.0 instead of 4.8 s per pair) at the cost of more memory (1.54 instead of 1.24 GiB), so off by default.

    A pair with a bad file is reported on one line (naming the pair, the file and the problem), recorded in
    ``summary.csv`` as ``failed: ...``, and the others go on; the exit code is 1 when any pair failed.
    """
    code = _guard(_batch, bundle, datalist, out, section, device, overwrite, ckpt, instance_iterations, resume,
                  outputs, compression, pipeline)  # fmt: skip
    if code:
        sys.exit(code)


def _download(name: str, index: str, bundle_dir: str, version: str | None) -> None:
    from common.engines.bundle_download import BundleDownloadError, download_bundle

    try:
        download_bundle(name, index, bundle_dir, version)
    except BundleDownloadError as exc:
        raise CLIError(str(exc)) from None


def download(name: str, index: str, bundle_dir: str = "bundles_dl", version: str | None = None) -> None:
    """Download a released bundle by name from a release index (``model_info.json`` of ``scripts/release.py``):
    the zip (sha256 checked against the index) and its weights (``download_large_files``, sha256 checked).

    Args:
        name: bundle name, e.g. ``brain_mri_hybrid_loss``.
        index: URL of the release's ``model_info.json``.
        bundle_dir: folder that receives ``<name>/``.
        version: a published version (default: the newest).
    """
    _guard(_download, name, index, bundle_dir, version)


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
    fire.Fire({"register": register, "batch": batch, "bundles": bundles, "download": download})


if __name__ == "__main__":
    main()
