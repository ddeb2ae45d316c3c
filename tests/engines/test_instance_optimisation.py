"""Instance optimisation recovers a known shift (dense and B-spline parameterisations)."""

from __future__ import annotations

import pytest
import torch

from common.conventions import identity_grid
from common.engines.instance_optimisation import InstanceOptimiser
from common.losses import CurvatureRegulariser, GradientRegulariser, NGFLoss, SSDLoss


def _blob(shape, centre):
    g = identity_grid(shape)[0]
    c = torch.tensor(centre, dtype=torch.float32).view(-1, 1, 1)
    return torch.exp(-((g - c) ** 2).sum(0) / 40.0)[None, None]


@pytest.mark.parametrize("kind", ["dense", "bspline"])
def test_recovers_a_shift_and_reduces_the_loss(kind):
    fixed = _blob((40, 40), (20.0, 20.0))
    moving = _blob((40, 40), (22.0, 19.0))  # fixed(x) = moving(x + (2, -1))
    kwargs = {"bspline_stride": 8} if kind == "bspline" else {"grid_factor": 2}
    loss = SSDLoss() if kind == "dense" else NGFLoss(epsilon=0.05)
    reg = GradientRegulariser() if kind == "dense" else CurvatureRegulariser()
    opt = InstanceOptimiser(loss, reg, reg_weight=0.1, iterations=80, lr=0.2, progress=False, **kwargs)
    ddf = opt(moving, fixed)
    centre = ddf[0, :, 17:23, 17:23].mean(dim=(1, 2))
    assert torch.allclose(centre, torch.tensor([2.0, -1.0]), atol=0.5), centre
    assert opt.history[-1] < opt.history[0]
    assert opt.seconds > 0


def test_rejects_mismatched_pair():
    opt = InstanceOptimiser(SSDLoss(), GradientRegulariser(), iterations=1, progress=False)
    with pytest.raises(ValueError, match="must share a grid"):
        opt(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
