"""Zhu et al. 2020's joint affine + deformable network: identity start, shared encoder, composition, export."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from common.blocks import affine_to_ddf, compose_ddf, warp
from common.methods.joint_affine import JointAffineDeformNet
from common.methods.joint_affine.engine import JointAffineDeformLoss, split_joint

SMALL = {"enc_channels": (8, 8, 8, 8), "dec_channels": (8, 8, 8)}


def _smooth_image(shape: tuple[int, ...]) -> torch.Tensor:
    axes = [torch.linspace(0, math.pi, n) for n in shape]
    g = torch.meshgrid(*axes, indexing="ij")
    img = torch.sin(2 * g[0]) * torch.cos(g[1]) + 0.5 * torch.sin(g[-1] + 0.3)
    return img[None, None]


def _set_affine_delta(net: JointAffineDeformNet, delta: list[float]) -> None:
    """Make the affine head output ``delta`` (normalised coordinates) for every input."""
    with torch.no_grad():
        net.affine_head.weight.zero_()
        net.affine_head.bias.copy_(torch.tensor(delta))


@pytest.mark.parametrize("dims, size", [(2, (32, 24)), (3, (16, 16, 8))])
def test_identity_at_initialisation(dims, size):
    net = JointAffineDeformNet(dims, **SMALL)
    x = torch.rand(2, 2, *size)
    pred = net(x)
    assert pred.shape == (2, 3 * dims, *size)
    total, aff, u = split_joint(pred)
    assert aff.abs().max() == 0  # zero-initialised linear layer: exactly the identity affine
    assert u.abs().max() < 1e-2 and total.abs().max() < 1e-2
    assert torch.equal(net.affine_matrix(x), torch.eye(dims, dims + 1).expand(2, dims, dims + 1))


def test_affine_channels_follow_the_voxel_convention():
    net = JointAffineDeformNet(2, **SMALL).eval()
    # normalised delta: +0.2 translation along axis 0, 5 % scaling along axis 1
    _set_affine_delta(net, [0.0, 0.0, 0.2, 0.0, 0.05, 0.0])
    x = torch.rand(1, 2, 32, 16)
    matrix = net.affine_matrix(x)
    # t_vox = H t_n with H = (n - 1) / 2 = (15.5, 7.5); the diagonal is unchanged by H A H^-1
    expected = torch.tensor([[[1.0, 0.0, 0.2 * 15.5], [0.0, 1.05, 0.0]]])
    assert torch.allclose(matrix, expected, atol=1e-6)
    _, aff, _ = split_joint(net(x))
    assert torch.allclose(aff, affine_to_ddf(matrix, (32, 16)), atol=1e-5)
    # anisotropic grid: an off-diagonal entry is rescaled by h_i / h_j
    _set_affine_delta(net, [0.0, 0.1, 0.0, 0.0, 0.0, 0.0])
    assert math.isclose(float(net.affine_matrix(x).detach()[0, 0, 1]), 0.1 * 15.5 / 7.5, rel_tol=1e-6)


def _count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_one_encoder_serves_both_stages():
    full = JointAffineDeformNet(2, **SMALL)
    affine_only = JointAffineDeformNet(2, use_deformable=False, **SMALL)
    deform_parts = (full.dilated, full.ups, full.dec_blocks, full.flow)
    # one encoder's parameters, not two
    assert _count(full) == _count(full.encoder, full.affine_head, *deform_parts)
    assert _count(full) == _count(affine_only) + _count(*deform_parts)
    assert _count(affine_only) == _count(affine_only.encoder, affine_only.affine_head)
    # the same encoder modules run twice per forward: on [M, F] and on [A, F]
    _set_affine_delta(full, [0.0, 0.0, 0.1, 0.0, 0.0, 0.0])
    calls: list[torch.Tensor] = []
    full.encoder.blocks[0].register_forward_hook(lambda m, i, o: calls.append(i[0]))
    x = torch.rand(1, 2, 32, 32)
    _, aff, _ = split_joint(full(x))
    assert len(calls) == 2 and torch.equal(calls[0], x)
    assert torch.equal(calls[1][:, 1:], x[:, 1:])
    assert torch.allclose(calls[1][:, :1], warp(x[:, :1], aff)) and not torch.allclose(calls[1][:, :1], x[:, :1])


def test_affine_loss_alone_trains_the_shared_encoder_but_not_the_decoder():
    net = JointAffineDeformNet(2, **SMALL)
    torch.nn.init.normal_(net.affine_head.weight, 0.0, 0.1)  # as after some training (at init it is zero)
    fixed = _smooth_image((32, 32))
    moving = torch.roll(fixed, 2, dims=2)
    loss = JointAffineDeformLoss(affine_weight=1.0, sim_weight=0.0, anat_weight=0.0, smooth_weight=0.0)
    loss(net(torch.cat([moving, fixed], 1)), {"moving_image": moving, "fixed_image": fixed}).backward()
    assert set(loss.last_terms) == {"affine_ncc", "total"}
    for p in net.encoder.parameters():
        assert p.grad is not None
    assert sum(float(p.grad.abs().sum()) for p in net.encoder.parameters()) > 0
    # the deformable branch only receives the zero gradient of the unused output channels
    assert all(
        p.grad is None or not p.grad.any() for m in (net.dilated, net.dec_blocks, net.flow) for p in m.parameters()
    )


def test_total_is_the_affine_then_the_deformable_map(monkeypatch):
    size = (32, 32)
    net = JointAffineDeformNet(2, **SMALL).eval()
    angle = 0.1
    _set_affine_delta(net, [math.cos(angle) - 1, -math.sin(angle), 0.1, math.sin(angle), math.cos(angle) - 1, -0.05])
    g = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in size], indexing="ij")
    u = torch.stack([1.5 * torch.sin(g[1] / 5.0), -1.0 * torch.cos(g[0] / 7.0)])[None]
    monkeypatch.setattr(net, "_deformation", lambda warped, fixed: u)
    moving = _smooth_image(size)
    x = torch.cat([moving, torch.rand_like(moving)], 1)
    total, aff, u_out = split_joint(net(x))
    assert torch.equal(u_out, u)
    # analytic composition: total(x) = u(x) + aff(x + u(x)), aff(y) = (A - I)(y - c) + t
    matrix = net.affine_matrix(x)[0]
    centre = torch.tensor([(n - 1) / 2 for n in size]).view(2, 1, 1)
    y = torch.stack(g) + u[0]
    expected = u[0] + torch.einsum("ij,jhw->ihw", matrix[:, :2] - torch.eye(2), y - centre) + matrix[:, 2].view(2, 1, 1)
    inner = (slice(None), slice(4, -4), slice(4, -4))  # away from border clamping
    assert torch.allclose(total[0][inner], expected[inner], atol=1e-4)
    assert torch.allclose(total, compose_ddf(aff, u), atol=1e-6)
    # warping once by the total equals warping by the affine, then by u (interpolation tolerance)
    once, twice = warp(moving, total), warp(warp(moving, aff), u)
    assert (once - twice)[0][inner].abs().max() < 0.02 * float(moving.abs().max())


def test_ablation_without_affine_part():
    net = JointAffineDeformNet(2, use_affine=False, **SMALL)
    assert not hasattr(net, "affine_head")
    torch.nn.init.normal_(net.flow.conv.weight, 0.0, 0.1)
    x = torch.rand(2, 2, 32, 32)
    total, aff, u = split_joint(net(x))
    assert aff.abs().max() == 0 and u.abs().max() > 1e-3
    assert torch.equal(total, u)
    assert torch.equal(net.affine_matrix(x), torch.eye(2, 3).expand(2, 2, 3))


def test_ablation_affine_only():
    net = JointAffineDeformNet(2, use_deformable=False, **SMALL)
    assert not any(hasattr(net, n) for n in ("dilated", "ups", "dec_blocks", "flow"))
    _set_affine_delta(net, [0.05, 0.0, 0.1, 0.0, 0.0, -0.2])
    x = torch.rand(1, 2, 32, 32)
    total, aff, u = split_joint(net(x))
    assert u.abs().max() == 0 and aff.abs().max() > 1.0
    assert torch.equal(total, aff)


@pytest.mark.parametrize(
    "kwargs, shape, match",
    [
        ({}, (1, 3, 32, 32), r"JointAffineDeformNet: expected input \(B, 2, \*S\).*got shape \(1, 3, 32, 32\)"),
        ({}, (1, 2, 32, 32, 32), r"JointAffineDeformNet: expected input .*2 spatial dims"),
        ({}, (1, 2, 36, 32), r"JointAffineDeformNet: spatial size \(36, 32\) must be divisible by 8"),
        ({"enc_channels": (8, 8), "dec_channels": (8,)}, (1, 2, 33, 32), r"divisible by 2 "),
    ],
)
def test_rejects_bad_inputs(kwargs, shape, match):
    net = JointAffineDeformNet(2, **{**SMALL, **kwargs})
    with pytest.raises(ValueError, match=match):
        net(torch.rand(*shape))
    with pytest.raises(ValueError, match=match):
        net.affine_matrix(torch.rand(*shape))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
        ({"in_channels": 3}, "in_channels must be even"),
        ({"dec_channels": (8, 8)}, "need 3 dec_channels"),
        ({"enc_channels": (8,), "dec_channels": ()}, "need at least 2 enc_channels"),
        ({"use_affine": False, "use_deformable": False}, "nothing to predict"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"JointAffineDeformNet: .*{match}"):
        JointAffineDeformNet(**{"spatial_dims": 2, **SMALL, **kwargs})


@pytest.mark.parametrize("dims, size", [(2, (32, 32)), (3, (16, 16, 16))])
def test_trace_reproduces_the_eager_output(dims, size):
    net = JointAffineDeformNet(dims, **SMALL)
    torch.nn.init.normal_(net.affine_head.weight, 0.0, 0.05)
    torch.nn.init.normal_(net.flow.conv.weight, 0.0, 0.05)
    net.eval()
    x, other = torch.rand(1, 2, *size), torch.rand(1, 2, *size)
    with _NoTracerWarning():
        traced = torch.jit.trace(net, x, check_trace=False)
    # run as exported models are run (inference, no autograd): see the module docstring of the network
    with torch.no_grad():
        eager = net(x)
        assert eager[:, dims : 2 * dims].abs().max() > 0.01  # a non-trivial affine is traced
        for _ in range(2):  # the profiling executor re-optimises the graph on the second call
            assert torch.allclose(traced(x), eager, atol=1e-5)
        assert torch.allclose(traced(other), net(other), atol=1e-5)  # not a constant


class _NoTracerWarning:
    """Fails if tracing emits a ``TracerWarning`` (e.g. a data-dependent branch baked into the trace)."""

    def __enter__(self) -> None:
        self._ctx = warnings.catch_warnings(record=True)
        self._log = self._ctx.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)
        tracer = [w for w in self._log if issubclass(w.category, torch.jit.TracerWarning)]
        assert not tracer, [str(w.message) for w in tracer]


def test_instance_norm_gives_the_same_result_in_train_and_eval_mode_and_per_pair():
    torch.manual_seed(0)
    net = JointAffineDeformNet(2, norm="instance", **SMALL)
    assert not any("running" in k for k in net.state_dict())
    x = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        net.train()
        train_out = net(x)
        net.eval()
        eval_out = net(x)
        alone = net(x[1:])
    assert torch.allclose(train_out, eval_out, atol=1e-6)
    assert torch.allclose(eval_out[1:], alone, atol=1e-5)  # a pair's result does not depend on its batch
    # v0.1 batch norm: eval mode uses running statistics, which differ from one pair's own statistics
    old = JointAffineDeformNet(2, **SMALL)  # default: the paper's batch norm
    assert any("running_mean" in k for k in old.state_dict())
    with torch.no_grad():
        old.train()
        old(x * 3 + 1)
        old.eval()
        a = old.encoder(x)[-1]
        old.train()
        b = old.encoder(x)[-1]
    assert not torch.allclose(a, b, atol=1e-3)


def test_moment_pooling_sees_where_features_are():
    net = JointAffineDeformNet(2, affine_pooling="moments", use_deformable=False, **SMALL)
    assert net.affine_head.in_features == 8 * 3
    feats = torch.zeros(1, 8, 4, 5)
    feats[0, 0, 0, :] = 1.0  # first row (normalised coordinate -1 along axis 0)
    pooled = net._pool(feats)
    assert pooled.shape == (1, 24)
    assert math.isclose(float(pooled[0, 0]), 0.25)  # mean
    assert math.isclose(float(pooled[0, 8]), -0.25)  # mean of feature x axis-0 coordinate
    assert abs(float(pooled[0, 16])) < 1e-7  # centred along axis 1
    mean_only = JointAffineDeformNet(2, use_deformable=False, **SMALL)
    flipped = feats.flip(2)
    assert torch.equal(mean_only._pool(feats), mean_only._pool(flipped))  # the mean cannot tell them apart
    assert not torch.equal(net._pool(feats), net._pool(flipped))


@pytest.mark.parametrize(
    "kwargs, match", [({"norm": "group"}, "norm must be"), ({"affine_pooling": "max"}, "affine_pooling must be")]
)
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JointAffineDeformNet(2, **{**SMALL, **kwargs})


def test_too_small_an_image_is_a_clear_error():
    net = JointAffineDeformNet(3, norm="instance", **SMALL).eval()
    with pytest.raises(ValueError, match=r"single voxel after 3 downsamplings.*at least 16 voxels"):
        net(torch.rand(1, 2, 8, 8, 8))
    assert net(torch.rand(1, 2, 8, 8, 16)).shape == (1, 9, 8, 8, 16)
