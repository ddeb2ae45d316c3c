"""scripts/finest_level_variants.py's pieces: the field inverse, the log-Jacobian regulariser, the cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from common.blocks import compose_ddf
from common.losses import GradientRegulariser
from scripts import finest_level_variants as variants


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
