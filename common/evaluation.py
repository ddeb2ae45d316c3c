"""Evaluate a bundle on labelled held-out pairs next to the zero-displacement and affine-only baselines.

Every number a model card reports comes from this script: per pair and method it computes the Learn2Reg
metrics (mean and per-label Dice, HD95, SDlogJ, NDV, % folding) on the fixed image's own grid, and the bundle's
wall time per pair and peak memory (the bundle runs in a subprocess through ``monai.bundle run``, exactly as a
user runs it, so its peak RSS is its own).

Library functions (the study scripts call :func:`evaluate_bundle`); the command line is
``scripts/evaluate_bundle.py``::

    python scripts/evaluate_bundle.py --bundle brain_mri_hybrid_loss \
        --datalist data/prepared/brain/datalist_1mm.json --section test --out outputs/eval/hybrid
"""

from __future__ import annotations

import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.data.datalist import load_datalist
from common.engines.baselines import ants_affine, classic_bspline, itk_affine
from common.io.files import image_stem, pair_output_name
from common.io.nifti import atomic_path, read_nifti
from common.io.report import markdown_table, mean_sd, write_report
from common.metrics import dice_per_label, evaluate_registration

__all__ = [
    "evaluate_bundle",
    "evaluate_pair",
    "method_rows",
    "run_bundle",
    "score_field",
    "summary_cell",
    "BUNDLES_DIR",
]

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"

SUMMARY_KEYS = ("dice_mean", "hd95_mean", "sdlogj", "ndv_percent", "folding_percent", "seconds")
EXTRA_KEYS = ("folding_voxels", "dice_inverse")  # bundle rows only, where the method has them


def _pair_dir(out: Path, pair: dict[str, str]) -> Path:
    """The folder the bundle's writer uses for this entry (its ``id``, else ``<moving>_to_<fixed>``)."""
    return out / pair_output_name(pair, pair.get("id"))


def run_bundle(
    bundle: Path,
    datalist: Path,
    section: str,
    out: Path,
    ckpt: str | None,
    device: str,
    channels: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Run the bundle's inference.json over a datalist section in a subprocess; return wall time and peak RSS."""
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(bundle / "configs" / "inference.json"),
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--logging_file", str(bundle / "configs" / "logging.conf"),
        "--bundle_root", str(bundle),
        "--datalist", str(datalist), "--datalist_section", section,
        "--output_dir", str(out), "--overwrite", "true",
        "--device", f"$torch.device('{device}')",
    ]  # fmt: skip
    if ckpt:
        cmd += ["--ckpt_path", str(ckpt)]
    if channels:
        cmd += ["--channels", str(int(channels))]
    for key, value in (overrides or {}).items():  # repr: fire parses Python literals (False, 50), not 'false'
        cmd += [f"--{key}", repr(value) if not isinstance(value, str) else value]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(bundle), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"evaluate_bundle: {bundle.name} inference failed:\n{proc.stderr[-3000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_s": wall, "peak_rss_gib": max(peak_kib, before) / 2**20}


def _metrics(ddf: np.ndarray, warped: np.ndarray, fixed: np.ndarray, moving: np.ndarray, spacing) -> dict[str, Any]:
    m = evaluate_registration(ddf, warped, fixed, spacing, moving_labels=moving)
    return {
        "dice_mean": m["dice_mean"],
        "hd95_mean": m["hd95_mean"],
        "sdlogj": m["sdlogj"],
        "ndv_percent": m["ndv_percent"],
        "folding_percent": m["folding_percent"],
        "dice_per_label": m["dice_per_label"],
    }


def evaluate_pair(
    pair: dict[str, str], bundle_dir: Path | None, affine: bool, classic: dict[str, Any] | None = None,
    ants: bool = False,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Metrics of zero displacement, affine-only (ITK, 3D; optionally also ANTs), a classic iterative B-spline
    registration (optional) and the bundle's outputs for one pair."""
    fixed_lab, f_aff = read_nifti(pair["fixed_label"], dtype=np.int32)
    moving_lab, m_aff = read_nifti(pair["moving_label"], dtype=np.int32)
    dims = fixed_lab.ndim
    spacing = tuple(float(v) for v in np.sqrt((f_aff[:dims, :dims] ** 2).sum(0)))
    affine = affine and dims == 3
    zero = np.zeros((dims, *fixed_lab.shape), np.float32)
    results: dict[str, dict[str, Any]] = {}
    if moving_lab.shape == fixed_lab.shape and np.allclose(m_aff, f_aff):
        results["zero"] = {**_metrics(zero, moving_lab, fixed_lab, moving_lab, spacing), "seconds": 0.0}
    if affine:
        r = itk_affine(pair)
        results["affine"] = {**_metrics(r.ddf, r.warped_labels, fixed_lab, moving_lab, spacing), "seconds": r.seconds}
    if ants and dims == 3:
        r = ants_affine(pair)
        results["ants_affine"] = {**_metrics(r.ddf, r.warped_labels, fixed_lab, moving_lab, spacing),
                                  "seconds": r.seconds}  # fmt: skip
    if classic:
        r = classic_bspline(pair, **classic)
        results["classic"] = {**_metrics(r.ddf, r.warped_labels, fixed_lab, moving_lab, spacing), "seconds": r.seconds}
    if bundle_dir is not None:
        d = _pair_dir(bundle_dir, pair)
        warped, _ = read_nifti(d / "warped_label.nii.gz", ndim=dims, dtype=np.int32)
        disp, _ = read_nifti(d / "disp.nii.gz", ndim=dims + 1)
        info = json.loads((d / "metrics.json").read_text())["metrics"]
        ddf = np.moveaxis(disp, -1, 0)
        results["bundle"] = {
            **_metrics(ddf, warped, fixed_lab, moving_lab, spacing),
            "seconds": info.get("seconds_total"),
            "folding_voxels": info.get("folding_voxels"),
        }
        if (d / "warped_fixed_label.nii.gz").is_file():  # methods with an inverse: fixed labels onto the moving grid
            inv_warped, _ = read_nifti(d / "warped_fixed_label.nii.gz", ndim=dims, dtype=np.int32)
            # the forward rule mirrored: Learn2Reg presence test against the unwarped (fixed) labels
            inv = dice_per_label(inv_warped, moving_lab, moving=fixed_lab)
            results["bundle"]["dice_inverse"] = float(np.mean(list(inv.values()))) if inv else float("nan")
    return results


def method_rows(summary: str | Path, method: str) -> list[dict[str, float]]:
    """The numeric per-pair rows of ``method`` from the ``results.csv`` next to a ``summary.md`` of :func:`main`."""
    with open(Path(summary).parent / "results.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["method"] == method]
    return [{k: float(v) for k, v in r.items() if k not in ("pair", "method", "dice_per_label") and v not in ("", None)}
            for r in rows]  # fmt: skip


def summary_cell(rows: list[dict[str, float]], key: str, digits: int = 3) -> str:
    """``mean ± sd`` of ``key`` over ``rows``, or "not measured" when no row has it."""
    values = [r[key] for r in rows if key in r]
    return mean_sd(values, digits) if values else "not measured"


def evaluate_bundle(
    bundle: str = "brain_mri_hybrid_loss",
    datalist: str = "data/prepared/brain/datalist_1mm.json",
    section: str = "test",
    out: str = "outputs/eval",
    ckpt: str | None = None,
    device: str = "cpu",
    affine: bool = True,
    skip_bundle: bool = False,
    classic_iterations: int = 0,
    classic_stride: int = 4,
    classic_alpha: float = 0.1,
    limit: int | None = None,
    channels: int | None = None,
    overrides: dict[str, Any] | None = None,
    ants_affine: bool = False,
) -> str:
    """Evaluate ``bundle`` (and the zero/affine baselines) on ``section`` of ``datalist``; write CSV + Markdown.

    Args:
        bundle: folder name under bundles/.
        datalist: JSON with labelled pairs (moving_image, fixed_image, moving_label, fixed_label).
        section: datalist section to use.
        out: output folder (``<out>/<bundle>/`` gets the bundle outputs, ``results.csv`` and ``summary.md``).
        ckpt: weights to use instead of the bundle's models/model.pt (e.g. a training checkpoint export).
        device: torch device for the bundle.
        affine: also run the ITK affine baseline (3D only).
        skip_bundle: baselines only.
        classic_iterations: > 0 adds a classic iterative NGF + curvature B-spline registration per pair.
        classic_stride: its control-point spacing (voxels). classic_alpha: its curvature weight.
        limit: evaluate only the first ``limit`` pairs of the section.
        channels: network width override (ablation checkpoints).
        overrides: other inference.json values, e.g. ``--overrides '{"instance_iterations": 50}'``.
        ants_affine: also run the ANTs affine baseline (3D; needs antspyx, the ``peers`` extra).
    """
    bundle_path = BUNDLES_DIR / bundle
    out_dir = (Path(out) / bundle).resolve()  # the bundle runs with its own folder as working directory
    pairs = load_datalist(datalist, section)
    if limit:
        pairs = pairs[: int(limit)]
    classic = (
        {"iterations": classic_iterations, "stride": classic_stride, "alpha": classic_alpha}
        if classic_iterations > 0
        else None
    )
    run_info = None
    if not skip_bundle:
        used = Path(datalist).resolve()
        if limit:
            out_dir.mkdir(parents=True, exist_ok=True)
            used = out_dir / "datalist_used.json"
            with atomic_path(used) as tmp:
                tmp.write_text(json.dumps({section: pairs}, indent=1))
        run_info = run_bundle(bundle_path, used, section, out_dir / "outputs", ckpt, device, channels, overrides)
    rows = []
    for pair in tqdm(pairs, desc="metrics", unit="pair"):
        res = evaluate_pair(pair, None if skip_bundle else out_dir / "outputs", affine, classic, ants_affine)
        for method, m in res.items():
            rows.append({"pair": pair.get("id", image_stem(pair["moving_image"])), "method": method,
                         **{k: m.get(k) for k in SUMMARY_KEYS},
                         **{k: m.get(k) for k in EXTRA_KEYS},
                         "dice_per_label": json.dumps({str(k): round(float(v), 4) for k, v in m["dice_per_label"].items()})})  # fmt: skip
    return _write_results(rows, out_dir, f"Pairs: {len(pairs)} ({section} of {datalist}); mean ± sd over pairs.",
                          run_info, len(pairs))  # fmt: skip


def _write_results(rows: list[dict], out_dir: Path, head: str, run_info: dict | None, n_pairs: int) -> str:
    """``results.csv`` (one row per pair and method) and ``summary.md`` (mean ± sd per method) of a run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "results.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        head,
        "",
        markdown_table(
            ["method", "Dice", "HD95 (mm)", "SDlogJ", "NDV (%)", "det J ≤ 0 (%)", "time / pair (s)"],
            [
                [m, *(mean_sd(r[k] for r in rows if r["method"] == m) for k in SUMMARY_KEYS)]
                for m in dict.fromkeys(r["method"] for r in rows)
            ],
        ),
    ]
    if run_info:
        lines += ["", f"Bundle run: {run_info['wall_s']:.1f} s wall for {n_pairs} pairs (incl. start-up and "
                      f"writing all outputs), peak RSS {run_info['peak_rss_gib']:.2f} GiB."]  # fmt: skip
    return write_report(out_dir / "summary.md", lines)


def score_field(
    ddf: Any, pair: dict[str, str], moving_affine: np.ndarray, fixed_affine: np.ndarray
) -> dict[str, float]:
    """Dice (mean over the labels present in both maps), SDlogJ, % det J <= 0 and NDV of a displacement ``ddf``
    ``(1, 3, *S_fixed)`` (fixed voxels, a torch tensor) for a labelled pair; the moving labels are warped the way the
    bundles warp them (:func:`common.geometry.warp_labels_to_fixed`). Used by the instance-optimisation
    studies."""
    from common.geometry import warp_labels_to_fixed
    from common.metrics import ndv, percent_folding, sdlogj

    labels, _ = read_nifti(pair["moving_label"], dtype=None)
    fixed_labels, _ = read_nifti(pair["fixed_label"], dtype=None)
    warped = warp_labels_to_fixed(labels, moving_affine, ddf, fixed_affine)
    per = dice_per_label(warped, np.rint(fixed_labels).astype(np.int64))
    values = [v for v in per.values() if v is not None and np.isfinite(v)]
    u = ddf[0].numpy()
    return {
        "dice": float(np.mean(values)),
        "sdlogj": float(sdlogj(u)),
        "folding_percent": float(percent_folding(u)),
        "ndv_percent": float(ndv(u)),
    }
