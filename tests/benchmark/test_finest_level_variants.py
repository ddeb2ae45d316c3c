"""scripts/finest_level_variants.py's pieces (inverse, log-Jacobian term, schedules); the study base vs the bundles."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from common.blocks import compose_ddf, warp
from common.engines.instance_optimisation import InstanceOptimiser
from common.losses import GradientRegulariser
from scripts import finest_level_variants as variants
from scripts.finest_level_study import COARSE, FINEST, SHIPPED

FRAGMENT = Path(__file__).resolve().parents[2] / "bundles/_shared/brain_inference.fragment.json"


def _smooth_field(shape=(24, 20, 16), amplitude=1.5) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.linspace(0, math.pi, n) for n in shape], indexing="ij")
    bump = torch.sin(grids[0]) * torch.sin(grids[1]) * torch.sin(grids[2])
    return amplitude * torch.stack([bump, 0.5 * bump, -bump])[None]


def test_inverse_undoes_the_field_both_ways():
    u = _smooth_field()
    inv = variants._inverse(u)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    assert compose_ddf(u, inv)[inner].abs().max() < 1e-3  # x -> x + inv -> (x + inv) + u(x + inv) = x
    assert compose_ddf(inv, u)[inner].abs().max() < 5e-2  # other side: interpolation error of the inverse itself
    assert inv.abs().max() > 1.0  # not trivially zero


def test_log_jacobian_term_is_zero_for_volume_preserving_maps_and_log_squared_for_scalings():
    shape = (12, 10, 8)
    x = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))[None]
    shear = torch.zeros_like(x)
    shear[:, 0] = 0.2 * x[:, 1]  # det J = 1
    reg = variants.DiffusionPlusLogJacobian(lam=3.0)
    diffusion = GradientRegulariser()
    assert float(reg(shear)) == pytest.approx(float(diffusion(shear)), abs=1e-12)
    scaling = 0.1 * x  # det J = 1.1^3 everywhere
    expected = float(diffusion(scaling)) + 3.0 * (3 * math.log(1.1)) ** 2
    assert float(reg(scaling)) == pytest.approx(expected, rel=1e-9)


def test_cosine_adam_decays_from_lr_to_zero_over_its_steps(monkeypatch):
    param = torch.zeros(3, requires_grad=True)
    monkeypatch.setattr(variants.CosineAdam, "steps", 4)
    opt = variants.CosineAdam([param], lr=0.3)
    seen = []
    for _ in range(5):
        param.sum().backward()
        opt.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen[1] == pytest.approx(0.15)  # half-way: half the rate
    assert seen[3] == pytest.approx(0.0, abs=1e-12) and seen[4] == pytest.approx(0.0, abs=1e-12)
    assert seen[0] > seen[1] > seen[2] > seen[3]


def test_unknown_variant_is_refused_with_one_line():
    with pytest.raises(SystemExit, match="unknown --variant 'mirror'"):
        variants.main("mirror", datalist="unused.json", cache="unused")


def test_scaled_adam_multiplies_the_gradient_and_moves_like_adam():
    a = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    plain, scaled = torch.optim.Adam([a], lr=0.1), variants.ScaledAdam([b], lr=0.1)
    variants.ScaledAdam.scale = 1.5
    try:
        (a * torch.tensor([0.3, 0.2, -0.1])).sum().backward()
        (b * torch.tensor([0.3, 0.2, -0.1])).sum().backward()
        plain.step()
        scaled.step()
    finally:
        variants.ScaledAdam.scale = 1.0
    assert torch.allclose(b.grad, 1.5 * a.grad)
    assert torch.allclose(a, b, atol=1e-6)  # Adam's step ignores the gradient's scale (but for eps)
    assert torch.allclose(a.detach(), torch.tensor([0.9, -2.1, 3.1]), atol=1e-6)  # first step: lr * sign


def _keywords(**extra):
    return {"levels": [1], "grid_factor": 1, "smoothing": 0, "progress": False, "ncc_kernel": 5, "patch_size": 8,
            **extra}  # fmt: skip


def test_composed_field_composes_the_residual_with_the_start_and_zero_keeps_the_start():
    init = _smooth_field(amplitude=2.0)
    opt = variants.ComposedOptimiser(**_keywords())
    zero = torch.zeros_like(init)
    assert torch.allclose(opt.field(zero, tuple(init.shape[2:]), init), init, atol=1e-5)
    r = 0.5 * torch.roll(_smooth_field(amplitude=1.0), 1, dims=1)
    assert torch.allclose(opt.field(r, tuple(init.shape[2:]), init), compose_ddf(init, r))
    assert not torch.allclose(compose_ddf(init, r), init + r, atol=1e-2)  # composed, not added


def _shifted_blobs(shift: float = 2.0, size: int = 24):
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    centre = torch.tensor([size / 2 - 1, size / 2, size / 2]).view(3, 1, 1, 1)
    moving = torch.exp(-((grid - centre) ** 2).sum(0) / 18.0)[None, None]
    fixed = torch.exp(-((grid - centre - torch.tensor([shift, 0, 0]).view(3, 1, 1, 1)) ** 2).sum(0) / 18.0)[None, None]
    return moving, fixed


def test_halfway_finds_the_shift_the_one_way_level_finds():
    moving, fixed = _shifted_blobs()  # fixed(x) = moving(x - 2 e0): the field points by -2 along axis 0
    settings = _keywords(iterations=60, lr=0.2, reg_weight=0.1)
    one_way = InstanceOptimiser(**settings)(moving, fixed)
    halfway = variants.HalfwayOptimiser(**settings)(moving, fixed)
    centre = (0, 0, slice(10, 15), slice(10, 15), slice(10, 15))
    assert -2.4 < float(one_way[centre].mean()) < -1.2  # measured -1.46
    assert -2.4 < float(halfway[centre].mean()) < -1.2  # measured -1.49
    across = (0, slice(1, 3), slice(10, 15), slice(10, 15), slice(10, 15))
    assert abs(float(halfway[across].mean())) < 0.05 and abs(float(one_way[across].mean())) < 0.05  # no net sideways
    zero = torch.zeros(1, 3, 24, 24, 24)
    assert torch.allclose(variants.HalfwayOptimiser(**settings).field(zero, (24, 24, 24), one_way), one_way, atol=1e-5)


def test_halfway_result_is_twice_the_inverse_of_the_fixed_side_half_field():
    """u = 2 v with v = s(x + v): the fixed image moved by -s and the moving image by +s meet at the same point."""
    params = _smooth_field(amplitude=3.0)  # s = params / 2 (no smoothing), up to 1.5 voxels
    opt = variants.HalfwayOptimiser(**_keywords())
    size = tuple(params.shape[2:])
    u = opt.field(params, size)
    s = 0.5 * params
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    assert (u - 2.0 * warp(s, 0.5 * u))[inner].abs().max() < 1e-3  # the fixed point, not merely 2 s
    assert (u - 2.0 * s)[inner].abs().max() > 0.1


def test_variant_classes_refuse_settings_their_overrides_do_not_cover():
    with pytest.raises(SystemExit, match="needs dense, non-diffeomorphic levels"):
        variants.ComposedOptimiser(**_keywords(samples=4096))
    with pytest.raises(SystemExit, match="needs dense, non-diffeomorphic levels"):
        variants.HalfwayOptimiser(**_keywords(diffeomorphic=True))
    with pytest.raises(SystemExit, match="halfway scores LNCC"):
        variants.HalfwayOptimiser(**_keywords(image_loss="mind"))


def test_refine_restores_adam_and_the_scale_even_when_the_run_fails(monkeypatch):
    seen = {}

    def failing(optimiser, *args):
        seen["adam"], seen["scale"], seen["class"] = torch.optim.Adam, variants.ScaledAdam.scale, type(optimiser)
        raise RuntimeError("stop")

    monkeypatch.setattr(variants, "refine_on_fixed_grid", failing)
    adam = torch.optim.Adam
    with pytest.raises(RuntimeError, match="stop"):
        variants._refine("halfway", _keywords(), 1.000001, torch.zeros(1, 3, 8, 8, 8), ())
    assert seen == {"adam": variants.ScaledAdam, "scale": 1.000001, "class": variants.HalfwayOptimiser}
    assert torch.optim.Adam is adam and variants.ScaledAdam.scale == 1.0


def test_scale_is_refused_with_the_cosine_schedule():
    with pytest.raises(SystemExit, match="--scale applies to every variant but cosine"):
        variants.main("cosine", datalist="unused.json", cache="unused", scale=1.000001)


def test_the_study_base_is_the_bundles_schedule_and_shipped_differs_only_in_shipped_keys():
    """COARSE (4, 2 mm) then FINEST | SHIPPED (input grid) is what the brain bundles run at instance_iterations 80."""
    ids = json.loads(FRAGMENT.read_text())["ids"]
    per_level = {"levels": "instance_levels", "reg_weight": "instance_reg_weight", "ncc_kernel": "instance_ncc_kernel",
                 "grid_factor": "instance_grid_factor", "fold_weight": "instance_fold_weight"}  # fmt: skip
    iterations = [int(round(80 * w)) for w in ids["instance_schedule"]]
    assert COARSE["iterations"][:2] == iterations[:2] and FINEST["iterations"] == iterations[2]
    shipped = {**FINEST, **SHIPPED}
    for key, name in per_level.items():
        shipped_levels = ids[name] if isinstance(ids[name], list) else [ids[name]] * 3
        coarse_levels = COARSE[key] if isinstance(COARSE[key], list) else [COARSE[key]] * 3
        assert coarse_levels[:2] == shipped_levels[:2], key
        fine = shipped[key] if isinstance(shipped[key], list) else [shipped[key]]
        assert fine == shipped_levels[2:], key
    same = {"lr": "instance_lr", "smoothing": "instance_smoothing", "image_loss": "instance_similarity"}
    for key, name in same.items():
        assert COARSE[key] == shipped[key] == ids[name], key
    assert ids["instance_samples"] == 0 and not ids["instance_diffeomorphic"]  # the study's levels are dense
