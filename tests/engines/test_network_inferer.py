"""NetworkInferer: inference mode and optional bfloat16 autocast around MONAI's SimpleInferer."""

from __future__ import annotations

import torch
from monai.inferers import SimpleInferer

from common.engines import NetworkInferer


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(2, 8, 3, padding=1), torch.nn.LeakyReLU(0.2), torch.nn.Conv3d(8, 3, 3, padding=1)
    ).eval()


def test_same_prediction_as_simple_inferer_and_usable_by_autograd_afterwards():
    net, x = _net(), torch.rand(1, 2, 12, 10, 8)
    with torch.no_grad():
        ref = SimpleInferer()(x, net)
    out = NetworkInferer()(x, net)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert not out.is_inference()  # instance optimisation starts from descendants of it, with gradients
    w = torch.ones(1, requires_grad=True)
    (out * w).sum().backward()
    assert w.grad is not None


def test_bf16_autocast_runs_the_network_in_bfloat16_and_returns_float32():
    net, x = _net(), torch.rand(1, 2, 12, 10, 8)
    with torch.no_grad():
        ref = net(x)
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = NetworkInferer(bf16=True)(x, net)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    assert 0 < (out - ref).abs().max() < 0.05 * ref.abs().max()
