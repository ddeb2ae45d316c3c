"""Tune the instance-optimisation engine on labelled pairs (validation pairs only; never the test pairs).

The bundle's network runs once per pair (its own ``inference.json``, ``instance_iterations`` 0, writing the
Learn2Reg displacement); each setting then refines that field with
:func:`common.engines.inference.refine_on_fixed_grid` (the code the bundle runs for ``instance_iterations > 0``)
and is scored the way the bundle scores itself (labels warped by one-hot linear interpolation, Dice over the
labels present in both maps, SDlogJ, % det J <= 0, NDV).

Usage::

    python scripts/instance_optimisation_study.py --bundle brain_mri_lumir_cascade \
        --datalist data/prepared/brain/datalist_1mm.json --section validation --out outputs/io_study \
        --settings '[{"image_loss": "mind", "iterations": [40, 20], "levels": [2, 1], "samples": 65536}]'
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

from common.data.datalist import load_datalist
from common.engines.bundle import run_bundle
from common.engines.inference import refine_on_fixed_grid
from common.engines.instance_optimisation import InstanceOptimiser
from common.evaluation import score_field
from common.io.files import pair_output_name
from common.io.l2r import read_l2r_displacement
from common.io.nifti import atomic_path, read_nifti
from common.io.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def main(
    bundle: str = "brain_mri_lumir_cascade",
    datalist: str = "data/prepared/brain/datalist_1mm.json",
    section: str = "validation",
    out: str = "outputs/io_study",
    settings: str | list[dict[str, Any]] = "[]",
    limit: int = 0,
    threads: int = 0,
) -> str:
    """Run every setting on every pair of ``section``; write ``results.json`` and ``results.md`` under ``out``.

    Args:
        bundle: bundle folder name under ``bundles/``.
        datalist / section: labelled pairs (``validation`` for tuning).
        out: output folder (the network's outputs are kept and reused).
        settings: JSON list of :class:`InstanceOptimiser` keyword sets; ``{}`` is the network alone.
        limit: first N pairs only (0 = all).
        threads: torch threads (0 = leave the default).
    """
    if section == "test":
        print("instance_optimisation_study: tuning on test pairs is not allowed here; use validation.")
        raise SystemExit(2)
    if threads:
        torch.set_num_threads(int(threads))
    sets = json.loads(settings) if isinstance(settings, str) else list(settings)
    pairs = load_datalist(datalist, section)[: limit or None]
    out_dir = Path(out)
    net_dir = out_dir / "network"
    todo = [p for p in pairs if not (net_dir / pair_output_name(p, p.get("id")) / "disp.nii.gz").is_file()]
    if todo:
        listing = out_dir / "pairs.json"
        out_dir.mkdir(parents=True, exist_ok=True)
        listing.write_text(json.dumps({"test": todo}))
        run_bundle(ROOT / "bundles" / bundle, "inference", "infer", datalist=str(listing.resolve()),
                   output_dir=str(net_dir.resolve()), overwrite=True)  # fmt: skip
    results_path = out_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for pair in pairs:
        name = pair_output_name(pair, pair.get("id"))
        moving, m_aff = read_nifti(pair["moving_image"])
        fixed, f_aff = read_nifti(pair["fixed_image"])
        init = read_l2r_displacement(net_dir / name / "disp.nii.gz")
        for setting in [{}, *sets]:
            key = json.dumps(setting, sort_keys=True)
            if name in results.get(key, {}):
                continue
            start = time.perf_counter()
            if setting:
                opt = InstanceOptimiser(**{"progress": False, **setting})
                ddf = refine_on_fixed_grid(opt, init, moving, m_aff, fixed, f_aff)
            else:
                ddf = init
            seconds = time.perf_counter() - start
            row = {**score_field(ddf, pair, m_aff, f_aff), "seconds": seconds}
            results.setdefault(key, {})[name] = row
            print(f"{name} {key}: {row}", flush=True)
            with atomic_path(results_path) as tmp:
                tmp.write_text(json.dumps(results, indent=1))
    rows = []
    for key, per_pair in results.items():
        vals = list(per_pair.values())
        rows.append(
            [key if key != "{}" else "network alone", len(vals)]
            + [f"{np.mean([v[k] for v in vals]):.4f}" for k in ("dice", "sdlogj", "folding_percent", "ndv_percent")]
            + [f"{np.mean([v['seconds'] for v in vals]):.1f}"]
        )
    table = markdown_table(["setting", "pairs", "Dice", "SDlogJ", "det J <= 0 (%)", "NDV (%)", "s / pair"], rows)
    (out_dir / "results.md").write_text(f"# Instance optimisation study: {bundle}, {section}\n\n{table}\n")
    print(table)
    return str(out_dir / "results.md")


if __name__ == "__main__":
    fire.Fire(main)
