"""CascadeRegNet (Zhang et al. 2024): shapes, switches, identity start, learning direction, input errors."""

from __future__ import annotations

import pytest
import torch

from common.blocks import warp
from common.blocks.bilateral import BilateralFieldFilter
from common.methods.lumir_cascade import CascadeRegNet
from common.methods.lumir_cascade.network import CoAttention, ConvBlock, LargeKernelBlock

SMALL = {"enc_channels": (4, 8, 8), "flow_channels": 8}


@pytest.mark.parametrize("dims,size", [(2, (16, 24)), (3, (8, 16, 12))])
@pytest.mark.parametrize("finest_level", [0, 1])
def test_shape_levels_and_identity_start(dims, size, finest_level):
    torch.manual_seed(0)
    net = CascadeRegNet(spatial_dims=dims, finest_level=finest_level, **SMALL)
    x = torch.rand(2, 2, *size)
    out = net(x)
    assert out.shape == (2, dims, *size)
    # heads start at ~0 (std 1e-5): the untrained network is (almost) the identity
    assert out.abs().max() < 1e-3
    levels = net.forward_levels(x)
    assert len(levels) == 3 - finest_level
    for lvl, field in zip(range(2, finest_level - 1, -1), levels):
        assert field.shape[2:] == tuple(s // 2**lvl for s in size)


@pytest.mark.parametrize(
    "kwargs,module,count",
    [
        ({}, ConvBlock, 6),
        ({"large_kernel": True}, LargeKernelBlock, 6),
        ({"co_attention": True, "ca_levels": 2}, CoAttention, 2),
        ({"bilateral": True}, BilateralFieldFilter, 1),
    ],
)
def test_switches_build_their_modules(kwargs, module, count):
    net = CascadeRegNet(spatial_dims=3, **SMALL, **kwargs)
    assert sum(isinstance(m, module) for m in net.modules()) == count


def test_large_channels_and_cascade_steps():
    base = CascadeRegNet(spatial_dims=3, **SMALL)
    wide = CascadeRegNet(spatial_dims=3, enc_channels=(4, 8, 8), flow_channels=16)
    two = CascadeRegNet(spatial_dims=3, cascade_steps=2, **SMALL)
    assert len(two.estimators) == 2 * len(base.estimators) == 6
    assert wide.estimators["0_0"].body[0].out_channels == 16
    assert base.estimators["0_0"].body[0].out_channels == 8
    n = sum(p.numel() for p in base.parameters())
    assert sum(p.numel() for p in wide.parameters()) > n
    assert sum(p.numel() for p in two.parameters()) > n


def test_co_attention_starts_as_identity_then_mixes_streams():
    torch.manual_seed(0)
    ca = CoAttention(3, 8, heads=2, max_kv_tokens=16)
    m, f = torch.randn(1, 8, 4, 4, 4), torch.randn(1, 8, 4, 4, 4)
    m2, f2 = ca(m, f)
    assert torch.equal(m2, m) and torch.equal(f2, f)
    torch.nn.init.normal_(ca.out.weight)
    m3, _ = ca(m, f)
    m4, _ = ca(m, f + 1.0 * torch.randn_like(f))
    assert not torch.allclose(m3, m)
    assert not torch.allclose(m3, m4)  # the moving stream now depends on the fixed features
    # keys/values are pooled to at most 16 tokens (64 voxels -> 8)
    assert ca._kv_tokens(f).shape == (1, 8, 8)


def test_learns_a_shift_in_the_right_direction():
    """A few Adam steps on one pair: the field must point where the moving blob is (pull-back convention)."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blob = lambda cy, cx: torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)[None, None]  # noqa: E731
    fixed, moving = blob(16, 16), blob(19, 16)  # moving is 3 voxels further along axis 0
    net = CascadeRegNet(spatial_dims=2, enc_channels=(8, 8, 16), flow_channels=16)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    x = torch.cat([moving, fixed], 1)
    before = float(((moving - fixed) ** 2).mean())
    for _ in range(60):
        ddf = net(x)
        loss = ((warp(moving, ddf) - fixed) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ddf = net(x).detach()
    after = float(((warp(moving, ddf) - fixed) ** 2).mean())
    assert after < 0.3 * before
    # at the fixed blob's centre the field points to +axis 0 (where the moving blob is), about 3 voxels
    assert 1.5 < float(ddf[0, 0, 16, 16]) < 4.5
    assert abs(float(ddf[0, 1, 16, 16])) < 1.0


@pytest.mark.parametrize(
    "kwargs,shape,match",
    [
        ({}, (1, 1, 8, 8, 8), r"expected input \(B, 2, \*S\)"),
        ({}, (1, 2, 8, 8), r"3 spatial dims"),
        ({}, (1, 2, 8, 8, 6), r"divisible by 4"),
    ],
)
def test_bad_inputs_are_named(kwargs, shape, match):
    net = CascadeRegNet(spatial_dims=3, **SMALL, **kwargs)
    with pytest.raises(ValueError, match=match):
        net(torch.zeros(shape))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"finest_level": 3}, "finest_level"),
        ({"cascade_steps": 0}, "cascade_steps"),
        ({"co_attention": True, "ca_levels": 4}, "ca_levels"),
        ({"large_kernel": True, "lk_size": 4}, "kernel_size"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CascadeRegNet(**{"spatial_dims": 3, **SMALL, **kwargs})


def test_small_inputs_reach_a_one_voxel_level_without_error():
    """16^3 input, 5 levels: the coarsest level is 1 voxel; instance norm there gives its bias (x - mean = 0)."""
    from common.methods.lumir_cascade.network import _SafeInstanceNorm

    net = CascadeRegNet(spatial_dims=3, enc_channels=(4, 4, 8, 8, 8), flow_channels=8, large_kernel=True)
    assert net(torch.rand(1, 2, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    norm = _SafeInstanceNorm(3, affine=True)
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    assert torch.equal(norm(torch.randn(2, 3, 1, 1, 1)).flatten(), torch.tensor([0.5, -1.0, 2.0] * 2))
    x = torch.randn(2, 3, 4, 5, 6)
    assert torch.allclose(norm(x), torch.nn.functional.instance_norm(x, weight=norm.weight, bias=norm.bias))
