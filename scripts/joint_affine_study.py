"""The tables of issue 5 (Zhu et al. 2020) on held-out pairs WITHOUT pre-alignment, from trained checkpoints.

Rows (every one from ``scripts/evaluate_bundle.py``: the bundle's own inference in a subprocess, metrics on the
fixed image's 2 mm grid):

* before registration (zero displacement), ITK affine (Mattes MI) and ANTs affine (antspyx ``Affine``) of the
  same pairs, with their registration time;
* the network's affine part alone (``--component affine``) and the full network (affine then deformable);
* the ablation: ``noaffine`` (deformable part only), ``noanat`` (no Dice loss) and ``full``, trained with the
  same seed, data and schedule by ``scripts/train_variants.sh joint_affine affine_pretrain full noanat noaffine``.

Usage::

    python scripts/joint_affine_study.py --runs ~/.cache/monai-reg-zoo/runs/joint_affine_v2 \\
        --datalist data/prepared/brain/datalist_misaligned_2mm.json --out outputs/joint_affine_study

The shipped v0.2 weights are the third stage ``smooth10``:
``--variants full --full_run smooth10 --checkpoint epoch=10``. Every network is the configs' own (v0.2: instance
norm, moment pooling); runs of the v0.1 network (``runs/joint_affine``) need
``--network_overrides '{"network_def#norm": "batch", "network_def#affine_pooling": "mean"}'``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import fire
import numpy as np

from common.engines.baselines import peer_available
from common.evaluation import method_rows, summary_cell
from common.io.report import markdown_table, write_report

BUNDLE = "brain_mri_joint_affine"
KEYS = ["dice_mean", "hd95_mean", "sdlogj", "folding_percent", "seconds"]
HEADER = ["method", "Dice", "HD95 (mm)", "SDlogJ", "det J ≤ 0 (%)", "s / pair"]


def _per_label(summary: Path, methods: dict[str, str], names: dict[str, str]) -> list[list[str]]:
    """Per-structure mean Dice over pairs, one column per method (``methods``: column title -> method)."""
    with open(summary.parent / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    table: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        for code, value in json.loads(r["dice_per_label"]).items():
            table.setdefault(code, {}).setdefault(r["method"], []).append(value)
    out = []
    for code in sorted(table, key=int):
        cells = [f"{np.mean(table[code][m]):.3f}" if m in table[code] else "—" for m in methods.values()]
        out.append([names.get(code, code), *cells])
    return out


def checkpoint_path(run: Path, checkpoint: str = "best") -> Path:
    """``run/checkpoints/best_model.pt`` for ``best``, ``run/checkpoints/latest_checkpoint_epoch=N.pt`` for ``epoch=N``."""
    if checkpoint == "best":
        path = run / "checkpoints" / "best_model.pt"
    elif checkpoint.startswith("epoch=") and checkpoint[6:].isdigit():
        path = run / "checkpoints" / f"latest_checkpoint_{checkpoint}.pt"
    else:
        raise SystemExit(f"joint_affine_study: --checkpoint must be 'best' or 'epoch=N', got {checkpoint!r}.")
    if not path.is_file():
        raise SystemExit(f"joint_affine_study: {path}: no such checkpoint for variant '{run.name}'.")
    return path


def main(
    runs: str = str(Path.home() / ".cache" / "monai-reg-zoo" / "runs" / "joint_affine_v2"),
    datalist: str = "data/prepared/brain/datalist_misaligned_2mm.json",
    section: str = "test",
    out: str = "outputs/joint_affine_study",
    variants: str = "full,noanat,noaffine",
    device: str = "cpu",
    checkpoint: str = "best",
    network_overrides: dict[str, Any] | None = None,
    full_run: str = "full",
    instance_iterations: int = 0,
    instance_lr: float = 0.01,
) -> str:
    """Evaluate every variant's checkpoint and write ``<out>/study.md`` with the tables.

    ``checkpoint``: ``best`` (``best_model.pt``, the best validation Dice of the run) or ``epoch=N`` (the trainer's
    ``latest_checkpoint_epoch=N.pt``), e.g. to compare variants at the same number of iterations when one of them
    (the shipped ``full``) was trained longer. ``network_overrides``: config overrides for every variant's
    network (none: the configs' own, v0.2).
    ``full_run``: the run folder evaluated as the ``full`` variant (e.g. ``smooth5``, the fine-tuned third stage).
    ``instance_iterations`` > 0 adds two rows, the affine part alone and the full network with the affine part
    refined for each pair (the bundle's ``affine_iterations`` / ``affine_lr``; named ``instance_*`` before 0.3.0).
    """
    network_overrides = dict(network_overrides or {})
    from common.evaluation import evaluate_bundle

    out_dir = Path(out).resolve()
    names = [v for v in (variants.split(",") if isinstance(variants, str) else variants) if v]
    if "full" not in names:
        raise SystemExit("joint_affine_study: the 'full' variant is needed (it carries the baselines).")
    res: dict[str, list[dict[str, float]]] = {}
    summaries: dict[str, Path] = {}
    for name in names:
        ckpt = checkpoint_path(Path(runs) / (full_run if name == "full" else name), checkpoint)
        overrides = {**network_overrides, **({"network_def#use_affine": False} if name == "noaffine" else {})}
        summaries[name] = Path(evaluate_bundle(
            bundle=BUNDLE, datalist=datalist, section=section, out=str(out_dir / name), ckpt=str(ckpt),
            device=device, affine=name == "full", ants_affine=name == "full" and peer_available("ants"),
            overrides=overrides))  # fmt: skip
        res[name] = method_rows(summaries[name], "bundle")
    part = evaluate_bundle(bundle=BUNDLE, datalist=datalist, section=section, out=str(out_dir / "full_affine_part"),
                                ckpt=str(checkpoint_path(Path(runs) / full_run, checkpoint)), device=device,
                                affine=False, overrides={**network_overrides, "component": "affine"})  # fmt: skip
    base = {m: method_rows(summaries["full"], m) for m in ("zero", "affine", "ants_affine")}

    def row(label: str, rows: list[dict[str, float]], keys: list[str] = KEYS) -> list[str]:
        return [label, *(summary_cell(rows, k) for k in keys)]

    refined_rows = []
    if instance_iterations:
        refine = {"affine_iterations": int(instance_iterations), "affine_lr": float(instance_lr)}
        for component, label in (("affine", "affine part alone"), ("total", "full")):
            path = evaluate_bundle(
                bundle=BUNDLE, datalist=datalist, section=section, out=str(out_dir / f"full_refined_{component}"),
                ckpt=str(checkpoint_path(Path(runs) / full_run, checkpoint)), device=device, affine=False,
                overrides={**network_overrides, **refine, "component": component})  # fmt: skip
            refined_rows.append(
                row(f"network: {label}, affine refined for the pair ({int(instance_iterations)} Adam steps, "
                    f"lr {instance_lr:g})", method_rows(Path(path), "bundle"))
            )  # fmt: skip

    meta = json.loads(Path(datalist).read_text())
    draws = [e.get("misalignment", {}) for e in meta.get(section, [])]
    parts = [
        f"Checkpoints: {checkpoint} of each variant's run in {runs} (full: {full_run}). "
        f"Held-out pairs: {section} of {datalist} ({len(draws)} pairs, each moving image with its own random affine "
        "misalignment); mean ± sd over pairs. Metrics on the fixed image's grid. s / pair: the registration call "
        "for ITK/ANTs; the whole bundle inference (reading, resampling, network, writing every output) for the "
        "network rows.", "",
        "## Before registration, affine part, full network, and the classical affine registrations", "",
        markdown_table(HEADER, [
            row("before registration (zero displacement)", base["zero"]),
            row("ITK affine (Mattes MI, 2 mm)", base["affine"]),
            row("ANTs affine (antspyx Affine, 2 mm)", base["ants_affine"]),
            row("network: affine part alone", method_rows(part, "bundle")),
            row("network: full (affine + deformable)", res["full"]),
            *refined_rows,
        ]),
    ]  # fmt: skip
    ablation = [(lab, v) for lab, v in (("without the affine part", "noaffine"), ("without L_anat", "noanat"),
                                        ("full", "full")) if v in res]  # fmt: skip
    parts += ["", "## Ablation (same seed, data and schedule)", "",
              markdown_table(HEADER, [row(lab, res[v]) for lab, v in ablation])]  # fmt: skip
    labels = meta.get("label_names", {})
    codes = meta.get("label_codes", {})
    names_by_code = {str(codes[k]): v for k, v in labels.items() if k in codes}
    parts += ["", "## Per-structure Dice (mean over pairs)", "",
              markdown_table(["structure", "before", "ITK affine", "full network"],
                             _per_label(summaries["full"], {"before": "zero", "ITK affine": "affine",
                                                            "full network": "bundle"}, names_by_code))]  # fmt: skip
    parts += [
        "",
        "Misalignment draws: "
        + "; ".join(
            f"rot {d.get('rotation_deg')} deg, shift {d.get('translation_mm')} mm, scale {d.get('scale')}"
            for d in draws
        ),
    ]
    return write_report(out_dir / "study.md", parts)


if __name__ == "__main__":
    fire.Fire(main)
