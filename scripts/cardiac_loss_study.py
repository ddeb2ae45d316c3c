"""Loss-weight study of the cardiac bundle (Hering et al. 2019, Table 1 style), measured in one script.

Each variant scales one of delta (NGF), alpha (curvature), beta (label SSD) by x10, x0.1 or x0 around the
bundle's defaults (``--paper`` uses the paper's values 1, 1e3, 5e4 instead), trains with ``bundles/cardiac_cine_ngf_bspline/configs/train.json`` for the same budget, and is
scored on the same test slices: mean Dice over LV cavity / myocardium / RV and % of pixels with det J <= 0.
Resumable: a variant whose ``result.json`` exists is not retrained.

Usage::

    python scripts/cardiac_loss_study.py --epochs 3 --out outputs/cardiac_study
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import fire
import numpy as np
import torch

from common.io.nifti import atomic_path
from common.io.report import markdown_table, write_report

ROOT = Path(__file__).resolve().parents[1]

BUNDLE = ROOT / "bundles" / "cardiac_cine_ngf_bspline"
DEFAULTS = {"delta": 1.0, "alpha": 100.0, "beta": 20.0}  # the bundle's defaults (train.json)


PAPER = {"delta": 1.0, "alpha": 1000.0, "beta": 50000.0}


def variants(base: dict[str, float] = DEFAULTS) -> list[tuple[str, dict[str, float]]]:
    out = [("default", dict(base))]
    for key in ("delta", "alpha", "beta"):
        for factor in (10.0, 0.1, 0.0):
            v = dict(base)
            v[key] = base[key] * factor
            out.append((f"{key}x{factor:g}", v))
    return out


def score(ckpt: Path, datalist: Path, section: str = "test") -> dict[str, float]:
    """Mean Dice (labels 1-3) and % det J <= 0 of a checkpoint on a datalist section (in-process, batched)."""
    from monai.bundle import ConfigParser

    from common.blocks import warp_labels
    from common.data.datalist import load_datalist
    from common.engines.pair_loading import normalise_intensity
    from common.io.nifti import read_nifti
    from common.methods.ngf_bspline import BSplineToDDF
    from common.metrics import mean_dice, percent_folding

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    net = parser.get_parsed_content("network_def")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state) if isinstance(state, dict) and "model" in state else state)
    net.eval()
    to_ddf = BSplineToDDF(parser["strides"][-1])
    from common.blocks import warp

    dice, fold, dice0, ncc, ncc0 = [], [], [], [], []
    start = time.perf_counter()
    for item in load_datalist(datalist, section):
        m = normalise_intensity(read_nifti(item["moving_image"], ndim=2)[0])
        f = normalise_intensity(read_nifti(item["fixed_image"], ndim=2)[0])
        ml = read_nifti(item["moving_label"], ndim=2, dtype=np.int64)[0]
        fl = read_nifti(item["fixed_label"], ndim=2, dtype=np.int64)[0]
        x = torch.as_tensor(np.stack([m, f]))[None]
        with torch.no_grad():
            ddf = to_ddf(net(x), x.shape[2:])
        warped = warp_labels(torch.as_tensor(ml)[None, None], ddf, num_classes=4)[0, 0].numpy()
        dice.append(mean_dice(warped, fl, labels=[1, 2, 3]))
        dice0.append(mean_dice(ml, fl, labels=[1, 2, 3]))
        fold.append(percent_folding(ddf[0].numpy()))
        warped_img = warp(x[:, :1], ddf)[0, 0].numpy()
        ncc.append(float(np.corrcoef(warped_img.ravel(), f.ravel())[0, 1]))
        ncc0.append(float(np.corrcoef(m.ravel(), f.ravel())[0, 1]))
    seconds = (time.perf_counter() - start) / max(len(dice), 1)
    return {
        "dice": float(np.mean(dice)),
        "dice_sd": float(np.std(dice)),
        "dice_zero": float(np.mean(dice0)),
        "folding_percent": float(np.mean(fold)),
        "ncc": float(np.mean(ncc)),
        "ncc_zero": float(np.mean(ncc0)),
        "pairs": len(dice),
        "seconds_per_pair_incl_io": seconds,
    }


def main(
    epochs: int = 3,
    out: str = "outputs/cardiac_study",
    datalist: str | None = None,
    only: str | None = None,
    paper: bool = False,
) -> str:
    """Train every variant for ``epochs`` x epoch_length iterations and score it; write a Markdown table.

    Args:
        epochs: training epochs per variant (epoch_length 50, batch 8 from train.json).
        out: output folder (one sub-folder per variant, ``study.md``).
        datalist: cardiac datalist (default data/prepared/cardiac/datalist.json).
        only: comma-separated variant names to run (default all).
        paper: vary around the paper's weights instead of the bundle's defaults.
    """
    dl = Path(datalist) if datalist else ROOT / "data" / "prepared" / "cardiac" / "datalist.json"
    out_dir = Path(out).resolve()
    chosen = set(only.split(",")) if only else None
    rows = []
    for name, w in variants(PAPER if paper else DEFAULTS):
        if chosen and name not in chosen:
            continue
        run = out_dir / name
        result = run / "result.json"
        if not result.is_file():
            start = time.perf_counter()
            cmd = [
                sys.executable, "-m", "monai.bundle", "run",
                "--config_file", str(BUNDLE / "configs" / "train.json"),
                "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
                "--logging_file", str(BUNDLE / "configs" / "logging.conf"),
                "--bundle_root", str(BUNDLE), "--datalist", str(dl), "--output_dir", str(run),
                "--max_epochs", str(epochs), "--device", "$torch.device('cpu')",
                "--delta", str(w["delta"]), "--alpha", str(w["alpha"]), "--beta", str(w["beta"]),
            ]  # fmt: skip
            proc = subprocess.run(cmd, cwd=str(BUNDLE), capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"cardiac_loss_study: variant {name} failed:\n{proc.stderr[-3000:]}")
            train_s = time.perf_counter() - start
            last = max((run / "checkpoints").glob("latest*.pt"), key=lambda p: p.stat().st_mtime)
            res = {"variant": name, **w, "epochs": epochs, "train_seconds": train_s, **score(last, dl)}
            with atomic_path(result) as tmp:
                tmp.write_text(json.dumps(res, indent=2))
        rows.append(json.loads(result.read_text()))
        print(json.dumps(rows[-1]))
    lines = [
        f"Test slices: {rows[0]['pairs']} ED<->ES pairs; each variant trained {rows[0]['epochs']} epochs x 50 iterations, batch 8;",
        "score of the last checkpoint. Dice: mean over RV, myocardium, LV cavity.",
        "",
        markdown_table(
            ["variant", "delta", "alpha", "beta", "Dice", "det J <= 0 (%)", "whole-slice NCC"],
            [
                [
                    "no registration",
                    "",
                    "",
                    "",
                    f"{rows[0]['dice_zero']:.4f}",
                    0,
                    f"{rows[0].get('ncc_zero', float('nan')):.4f}",
                ]
            ]
            + [
                [
                    r["variant"],
                    f"{r['delta']:g}",
                    f"{r['alpha']:g}",
                    f"{r['beta']:g}",
                    f"{r['dice']:.4f} ± {r['dice_sd']:.4f}",
                    f"{r['folding_percent']:.3f}",
                    f"{r.get('ncc', float('nan')):.4f}",
                ]
                for r in rows
            ],
        ),
    ]
    return write_report(out_dir / "study.md", lines)


if __name__ == "__main__":
    fire.Fire(main)
