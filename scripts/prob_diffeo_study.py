"""The four comparisons of issue 8 (Dalca et al. 2018) on held-out pairs, from trained variant checkpoints.

Variants (``scripts/train_variants.sh prob_diffeo``, same seed, data and schedule): ``full`` (smoothed posterior,
bidirectional), ``diag`` (diagonal posterior), ``unidir`` (forward loss only), ``seg`` (+ Dice loss). Each is
evaluated by ``scripts/evaluate_bundle.py`` (the bundle's own inference in a subprocess, metrics on the fixed
grid); ``full`` is also run with 50 and 200 instance-optimisation iterations.

Usage::

    python scripts/prob_diffeo_study.py --runs ~/.cache/monai-reg-zoo/runs/prob_diffeo_v2 \
        --datalist data/prepared/brain/datalist_2mm.json --out outputs/prob_diffeo_study
"""

from __future__ import annotations

from pathlib import Path

import fire

from common.evaluation import method_rows as _rows
from common.evaluation import summary_cell as _cell
from common.io.report import markdown_table, write_report

BUNDLE = "brain_mri_prob_diffeo"


def main(
    runs: str = str(Path.home() / ".cache" / "monai-reg-zoo" / "runs" / "prob_diffeo_v2"),
    datalist: str = "data/prepared/brain/datalist_2mm.json",
    section: str = "test",
    out: str = "outputs/prob_diffeo_study",
    variants: str = "full,diag,unidir,seg",
    instance_iterations: str = "50,200",
    device: str = "cpu",
    reuse: bool = True,
) -> str:
    """Evaluate every variant's best checkpoint and write ``<out>/study.md`` with the four tables.

    ``reuse``: keep an existing evaluation (``<out>/<variant>/<bundle>/summary.md``, e.g. from an earlier call
    while other variants were still training) instead of running it again.
    """
    from common.evaluation import evaluate_bundle

    out_dir = Path(out).resolve()

    def evaluate(folder: str, **kwargs):
        summary = out_dir / folder / BUNDLE / "summary.md"
        if reuse and summary.is_file():
            return summary
        return evaluate_bundle(bundle=BUNDLE, datalist=datalist, section=section, out=str(out_dir / folder),
                                    device=device, **kwargs)  # fmt: skip

    names = [v for v in (variants.split(",") if isinstance(variants, str) else variants) if v]
    iters = [int(i) for i in (instance_iterations.split(",") if isinstance(instance_iterations, str)
                              else instance_iterations) if str(i)]  # fmt: skip
    res: dict[str, list[dict[str, float]]] = {}
    base: dict[str, list[dict[str, float]]] = {}
    for name in names:
        ckpt = Path(runs) / name / "checkpoints" / "best_model.pt"
        if not ckpt.is_file():
            raise SystemExit(f"prob_diffeo_study: {ckpt}: no best checkpoint for variant '{name}'.")
        summary = evaluate(name, ckpt=str(ckpt), affine=name == "full")
        res[name] = _rows(summary, "bundle")
        if name == "full":
            base = {m: _rows(summary, m) for m in ("zero", "affine")}
    full_ckpt = Path(runs) / "full" / "checkpoints" / "best_model.pt"
    for n in iters:
        summary = evaluate(f"full_io{n}", ckpt=str(full_ckpt), affine=False, overrides={"instance_iterations": n})
        res[f"full_io{n}"] = _rows(summary, "bundle")

    def row(label: str, rows: list[dict[str, float]], keys: list[str]) -> list[str]:
        return [label, *(_cell(rows, k) for k in keys)]

    main_keys = ["dice_mean", "hd95_mean", "sdlogj", "ndv_percent", "folding_percent", "seconds"]
    parts = [f"Held-out pairs: {section} of {datalist}; mean ± sd over pairs.", "",
             "## Network (full variant) next to the baselines", "",
             markdown_table(["method", "Dice", "HD95 (mm)", "SDlogJ", "NDV (%)", "det J ≤ 0 (%)", "s / pair"],
                            [row(m, r, main_keys) for m, r in base.items()]
                            + ([row("bundle (full)", res["full"], main_keys)] if "full" in res else []))]  # fmt: skip
    if {"diag", "full"} <= set(res):
        parts += ["", "## Diagonal vs smoothed posterior", "",
                  markdown_table(["posterior", "Dice", "det J ≤ 0 (voxels)", "det J ≤ 0 (%)", "SDlogJ"],
                                 [row(lab, res[v], ["dice_mean", "folding_voxels", "folding_percent", "sdlogj"])
                                  for lab, v in (("diagonal", "diag"), ("smoothed", "full"))])]  # fmt: skip
    if {"unidir", "full"} <= set(res):
        parts += ["", "## Forward vs inverse Dice, with and without the bidirectional loss", "",
                  markdown_table(["loss", "forward Dice", "inverse Dice"],
                                 [row(lab, res[v], ["dice_mean", "dice_inverse"])
                                  for lab, v in (("forward only", "unidir"), ("bidirectional", "full"))])]  # fmt: skip
    if {"seg", "full"} <= set(res):
        parts += ["", "## With vs without the segmentation loss", "",
                  markdown_table(["training loss", "Dice", "HD95 (mm)", "det J ≤ 0 (%)"],
                                 [row(lab, res[v], ["dice_mean", "hd95_mean", "folding_percent"])
                                  for lab, v in (("images only", "full"), ("+ Dice loss", "seg"))])]  # fmt: skip
    io_rows = [("0 (network only)", "full")] + [(str(n), f"full_io{n}") for n in iters]
    parts += ["", "## Network only vs + instance-specific optimisation", "",
              markdown_table(["iterations", "Dice", "det J ≤ 0 (%)", "s / pair (whole inference)"],
                             [row(lab, res[v], ["dice_mean", "folding_percent", "seconds"])
                              for lab, v in io_rows if v in res])]  # fmt: skip
    return write_report(out_dir / "study.md", parts)


if __name__ == "__main__":
    fire.Fire(main)
