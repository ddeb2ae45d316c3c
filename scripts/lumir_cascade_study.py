"""The ablation table of issue 7 (Zhang et al. 2024, the paper's Table 2) on our held-out pairs.

Rows, each from ``scripts/evaluate_bundle.py`` (the bundle's own inference in a subprocess, metrics on the fixed
image's 2 mm grid): before registration (zero displacement) and ITK affine (Mattes MI) as baselines, then the
variants trained with the same seed, data and schedule by
``scripts/train_variants.sh lumir_cascade backbone bf ca lk lc2``, each adding one switch: the backbone,
+ bilateral filtering (BF), + co-attention (CA), + large kernels (LK), + large channels with two cascade steps per
level (LC-2).

Usage::

    python scripts/lumir_cascade_study.py --runs ~/.cache/monai-reg-zoo/runs/lumir_cascade \\
        --datalist data/prepared/brain/datalist_2mm.json --out outputs/lumir_cascade_study
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fire

from common.evaluation import method_rows, summary_cell
from common.io.report import markdown_table, write_report

BUNDLE = "brain_mri_lumir_cascade"
KEYS = ["dice_mean", "hd95_mean", "ndv_percent", "sdlogj", "folding_percent", "seconds"]
HEADER = ["method", "Dice", "HD95 (mm)", "NDV (%)", "SDlogJ", "det J ≤ 0 (%)", "s / pair"]
# (row label, the switches of inference.json), in the order of the paper's Table 2
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "backbone": ("backbone", {}),
    "bf": ("+ BF (bilateral filter)", {"bilateral": True}),
    "ca": ("+ CA (co-attention)", {"bilateral": True, "co_attention": True}),
    "lk": ("+ LK (large kernels)", {"bilateral": True, "co_attention": True, "large_kernel": True}),
    "lc2": ("+ LC-2 (large channels, 2 cascade steps)",
            {"bilateral": True, "co_attention": True, "large_kernel": True, "flow_channels": 32, "cascade_steps": 2}),
}  # fmt: skip


def variant_overrides(name: str) -> dict[str, Any]:
    """inference.json values that rebuild variant ``name``'s network (every switch is set explicitly)."""
    if name not in VARIANTS:
        raise ValueError(f"lumir_cascade_study: unknown variant {name!r} (known: {', '.join(VARIANTS)}).")
    base = {"bilateral": False, "co_attention": False, "large_kernel": False, "flow_channels": 16, "cascade_steps": 1}
    return {**base, **VARIANTS[name][1]}


def main(
    runs: str = str(Path.home() / ".cache" / "monai-reg-zoo" / "runs" / "lumir_cascade"),
    datalist: str = "data/prepared/brain/datalist_2mm.json",
    section: str = "test",
    out: str = "outputs/lumir_cascade_study",
    variants: str = "backbone,bf,ca,lk,lc2",
    device: str = "cpu",
    reuse: bool = True,
) -> str:
    """Evaluate every variant's best checkpoint and write ``<out>/study.md`` with the ablation table.

    ``reuse``: keep a variant's existing evaluation (``<out>/<variant>/<bundle>/summary.md``, e.g. from an
    earlier call while later variants were still training) instead of running it again.
    """
    from common.evaluation import evaluate_bundle

    out_dir = Path(out).resolve()
    names = [v for v in (variants.split(",") if isinstance(variants, str) else variants) if v]
    rows: list[list[str]] = []
    for i, name in enumerate(names):
        ckpt = Path(runs) / name / "checkpoints" / "best_model.pt"
        if not ckpt.is_file():
            raise SystemExit(f"lumir_cascade_study: {ckpt}: no best checkpoint for variant '{name}'.")
        summary = out_dir / name / BUNDLE / "summary.md"
        if not (reuse and summary.is_file()):
            summary = Path(evaluate_bundle(
                bundle=BUNDLE, datalist=datalist, section=section, out=str(out_dir / name), ckpt=str(ckpt),
                device=device, affine=i == 0, overrides=variant_overrides(name)))  # fmt: skip
        if i == 0:
            for label, method in (("before registration (zero displacement)", "zero"), ("ITK affine", "affine")):
                rows.append([label, *(summary_cell(method_rows(summary, method), k) for k in KEYS)])
        rows.append([VARIANTS[name][0], *(summary_cell(method_rows(summary, "bundle"), k) for k in KEYS)])
    parts = [
        f"Held-out pairs: {section} of {datalist}; mean ± sd over pairs, metrics on the fixed image's grid. "
        "s / pair: the registration call for ITK; the whole bundle inference (reading, resampling, network, "
        "writing every output) for the network rows. Each variant: its best validation checkpoint.",
        "",
        markdown_table(HEADER, rows),
    ]
    return write_report(out_dir / "study.md", parts)


if __name__ == "__main__":
    fire.Fire(main)
