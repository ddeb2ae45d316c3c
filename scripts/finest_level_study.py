"""Tune the finest (input-grid) level of the instance optimisation on one validation pair, from a cached coarse result.

The coarse levels (4 mm and 2 mm, ``--coarse``) refine the bundle's network field once per pair (the network fields
come from ``scripts/instance_optimisation_study.py``'s ``<out>/network/<pair>/disp.nii.gz``); the result is cached,
and every setting then runs only the input-grid level from it. That equals the full schedule (the engine resizes
the field found so far onto each level; checked: validation pair 00, 60/80/20 steps, Dice 0.74237 both ways).
``--post_sigmas`` also scores the refined field after a Gaussian of each sigma (the engine's ``final_sigma``).
Validation pairs (``--split test`` only re-measures a shipped setting). Results are appended to
``<cache>/results.jsonl``.

Usage::

    python scripts/finest_level_study.py --pair 0 --network outputs/io_study_v3/network --cache outputs/io_1mm \
        --settings '[{"iterations": 20, "reg_weight": 1.5}]' --post_sigmas '[0.75, 1.0]'
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import fire
import torch
import torch.nn.functional as F

from common.data.datalist import load_datalist
from common.engines.inference import refine_on_fixed_grid
from common.engines.instance_optimisation import InstanceOptimiser
from common.evaluation import score_field
from common.io.l2r import read_l2r_displacement
from common.io.nifti import read_nifti
from common.losses.probabilistic import GaussianSmoothing

# The 0.3.3 default (instance_iterations 80), the base of the ninth session's study: 4 and 2 mm levels on a 2-voxel
# control grid, then 20 voxel-wise steps on the input grid with diffusion weight 2 and the folding barrier. The
# shipped default (lumir_cascade 0.3.5, hybrid_loss / joint_affine 0.3.6) is FINEST | SHIPPED, both keys chosen with
# this script; tests/benchmark/test_finest_level_variants.py checks COARSE and FINEST | SHIPPED against the bundles.
FINEST = {"image_loss": "lncc", "ncc_kernel": 5, "levels": [1], "smoothing": 2, "lr": 0.3, "progress": False,
          "grid_factor": 1, "iterations": 20, "reg_weight": 2.0, "fold_weight": 100.0}  # fmt: skip
COARSE = {**FINEST, "levels": [4, 2, 1], "iterations": [60, 80, 0], "reg_weight": [1.0, 1.0, 2.0],
          "grid_factor": [2, 2, 1], "fold_weight": [0.0, 0.0, 100.0]}  # fmt: skip
SHIPPED = {"ncc_kernel": 7, "reg_weight": 1.5}


def main(
    pair: int = 0,
    datalist: str = "data/prepared/brain/datalist_1mm.json",
    network: str = "outputs/io_study_v3/network",
    cache: str = "outputs/io_1mm",
    settings: str | list[dict[str, Any]] = "[]",
    post_sigmas: str | list[float] = "[]",
    threads: int = 2,
    coarse: str | dict[str, Any] = "{}",
    split: str = "validation",
) -> str:
    """Run each finest-level setting (InstanceOptimiser keywords over :data:`FINEST`) on validation pair ``pair``.

    ``split="test"`` reads a test pair instead: only to re-measure a setting already chosen (e.g. the shipped one), to
    build the cache that ``scripts.finest_level_variants --split test`` reads for its noise floor.

    ``coarse`` overrides :data:`COARSE` keywords; use a separate ``cache`` per coarse setting (the cached coarse field
    is reused by name).
    """
    torch.set_num_threads(int(threads))
    entry = load_datalist(datalist, split)[int(pair)]
    name = entry["id"]
    moving, m_aff = read_nifti(entry["moving_image"])
    fixed, f_aff = read_nifti(entry["fixed_image"])
    out = Path(cache)
    out.mkdir(parents=True, exist_ok=True)
    coarse_path = out / f"{name}_coarse.pt"
    extra = json.loads(coarse) if isinstance(coarse, str) else dict(coarse)
    record = out / f"{name}_coarse.json"  # which --coarse built the cached field
    if coarse_path.is_file() and json.loads(record.read_text() if record.is_file() else "{}") != extra:
        raise SystemExit(
            f"finest_level_study: {coarse_path} was built with another --coarse ({record}); use another --cache"
        )
    if not coarse_path.is_file():
        init = read_l2r_displacement(Path(network) / name / "disp.nii.gz")
        start = time.perf_counter()
        field = refine_on_fixed_grid(InstanceOptimiser(**{**COARSE, **extra}), init, moving, m_aff, fixed, f_aff)
        print("coarse", extra, time.perf_counter() - start, score_field(field, entry, m_aff, f_aff), flush=True)
        torch.save(field, coarse_path)
        record.write_text(json.dumps(extra))
    field = torch.load(coarse_path)
    sets = json.loads(settings) if isinstance(settings, str) else list(settings)
    sigmas = json.loads(post_sigmas) if isinstance(post_sigmas, str) else list(post_sigmas)
    results = out / "results.jsonl"
    for setting in sets:
        start = time.perf_counter()
        ddf = refine_on_fixed_grid(InstanceOptimiser(**{**FINEST, **setting}), field, moving, m_aff, fixed, f_aff)
        seconds = time.perf_counter() - start
        fields = [(setting, ddf)]
        for sigma in sigmas:
            smooth = GaussianSmoothing(float(sigma), 3)
            r = smooth.radius
            padded = smooth(F.pad(ddf, [r] * 6, mode="replicate"))
            fields.append(({**setting, "post_sigma": sigma}, padded[..., r:-r, r:-r, r:-r]))
        for used, field in fields:
            row = {"pair": name, "setting": used, "coarse": extra, **score_field(field, entry, m_aff, f_aff),
                   "seconds": seconds}  # fmt: skip
            print(row, flush=True)
            with open(results, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    return str(results)


if __name__ == "__main__":
    fire.Fire(main)
