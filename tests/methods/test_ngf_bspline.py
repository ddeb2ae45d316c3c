"""Hering et al.'s shared-stream B-spline network and the multi-level loss."""

from __future__ import annotations

import pytest
import torch

from common.engines.registration import RegistrationLoss
from common.losses import CurvatureRegulariser, LabelSSDLoss, NGFLoss
from common.methods.ngf_bspline import BSplineToDDF, MultiLevelRegistrationLoss, SharedStreamBSplineNet


def test_levels_shapes_and_finest_output():
    net = SharedStreamBSplineNet(image_size=(48, 48), strides=(16, 8, 4), stream_channels=(4, 8), enc_channels=(8, 8))
    y = net(torch.rand(2, 2, 48, 48))
    assert [tuple(level.shape[2:]) for level in net.last_levels] == [(6, 6), (9, 9), (15, 15)]
    assert y is net.last_levels[-1] and y.shape == (2, 2, 15, 15)
    # starts near identity: the heads are initialised near zero
    assert y.abs().max() < 1e-2


def test_one_shared_stream_processes_both_images_independently():
    net = SharedStreamBSplineNet(image_size=(32, 32), strides=(8, 4), stream_channels=(4, 8), enc_channels=(8,))
    a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    assert sum(p.numel() for p in net.stream.parameters()) > 0 and not hasattr(net, "stream_fixed")
    fa, fb = net.stream(a), net.stream(b)
    assert torch.allclose(net.stream(torch.cat([a, b], 0)), torch.cat([fa, fb], 0), atol=1e-4)


def test_rejects_wrong_inputs():
    net = SharedStreamBSplineNet(image_size=(32, 32), strides=(8, 4), stream_channels=(4, 8), enc_channels=(8,))
    with pytest.raises(ValueError, match="expected \\(B, 2, \\*S\\)"):
        net(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="input size \\(40, 40\\) != image_size"):
        net(torch.rand(1, 2, 40, 40))


def test_multilevel_loss_is_the_weighted_sum_of_single_level_losses():
    torch.manual_seed(0)
    net = SharedStreamBSplineNet(image_size=(32, 32), strides=(8, 4), stream_channels=(4, 8), enc_channels=(8,))
    for p in net.heads.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    x = torch.rand(2, 2, 32, 32)
    lab = torch.randint(0, 3, (2, 1, 32, 32))
    targets = {"moving_image": x[:, :1], "fixed_image": x[:, 1:], "moving_label": lab, "fixed_label": lab.flip(-1)}
    terms = {"image_losses": [NGFLoss(0.1)], "label_losses": [LabelSSDLoss()], "regularisers": [CurvatureRegulariser()],
             "regulariser_weights": [10.0], "num_classes": 3}  # fmt: skip
    ml = MultiLevelRegistrationLoss(net, [BSplineToDDF(8), BSplineToDDF(4)], [0.25, 0.75], **terms)
    pred = net(x)
    total = ml(pred, targets)
    single = [
        RegistrationLoss(pred_to_ddf=BSplineToDDF(s), **terms)(lv, targets) for s, lv in zip((8, 4), net.last_levels)
    ]
    assert torch.allclose(total, 0.25 * single[0] + 0.75 * single[1], atol=1e-6)
    total.backward()
    assert all(p.grad is not None for p in net.heads.parameters())
    assert "network" not in dict(ml.named_modules())  # the network is not part of the loss's state


def _multilevel_setup():
    torch.manual_seed(0)
    net = SharedStreamBSplineNet(image_size=(32, 32), strides=(8, 4), stream_channels=(4, 8), enc_channels=(8,))
    for p in net.heads.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    x = torch.rand(2, 2, 32, 32)
    targets = {"moving_image": x[:, :1], "fixed_image": x[:, 1:]}
    terms = {"image_losses": [NGFLoss(0.1)], "regularisers": [CurvatureRegulariser()], "regulariser_weights": [10.0]}
    return net, x, targets, terms


def test_multilevel_loss_under_a_ddp_wrapper_uses_every_level(tmp_path):
    """Given the DistributedDataParallel wrapper (one CPU process, gloo on a file store), the loss reads the levels
    of the wrapped network: the same total as without the wrapper, not a silent single-level loss."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    net, x, targets, terms = _multilevel_setup()
    plain = MultiLevelRegistrationLoss(net, [BSplineToDDF(8), BSplineToDDF(4)], [0.25, 0.75], **terms)
    expected = plain(net(x), targets)
    finest_only = RegistrationLoss(pred_to_ddf=BSplineToDDF(4), **terms)(net.last_levels[-1], targets)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(net)
        wrapped = MultiLevelRegistrationLoss(ddp, [BSplineToDDF(8), BSplineToDDF(4)], [0.25, 0.75], **terms)
        total = wrapped(ddp(x), targets)
        total.backward()
    finally:
        dist.destroy_process_group()
    assert torch.allclose(total, expected, atol=1e-6)
    assert not torch.allclose(total, finest_only, atol=1e-4)


def test_multilevel_loss_rejects_a_level_count_that_does_not_match():
    net, x, targets, terms = _multilevel_setup()
    three = MultiLevelRegistrationLoss(net, [BSplineToDDF(16), BSplineToDDF(8), BSplineToDDF(4)], **terms)
    with pytest.raises(ValueError, match="holds 2 level\\(s\\).*3 level_to_ddf"):
        three(net(x), targets)
    other = SharedStreamBSplineNet(image_size=(32, 32), strides=(8, 4), stream_channels=(4, 8), enc_channels=(8,))
    stale = MultiLevelRegistrationLoss(other, [BSplineToDDF(8), BSplineToDDF(4)], **terms)  # never ran forward
    with pytest.raises(ValueError, match="give the loss the network that ran this forward pass"):
        stale(net(x), targets)
