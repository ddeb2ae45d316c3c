"""Hering et al.'s shared-stream B-spline network and the multi-level loss."""

from __future__ import annotations

import pytest
import torch

from common.engines.registration import RegistrationLoss
from common.losses import CurvatureRegulariser, LabelSSDLoss, NGFLoss
from common.methods.ngf_bspline import AllLevels, BSplineToDDF, MultiLevelRegistrationLoss, SharedStreamBSplineNet


def test_levels_shapes_and_finest_output():
    net = SharedStreamBSplineNet(image_size=(48, 48), strides=(16, 8, 4), stream_channels=(4, 8), enc_channels=(8, 8))
    x = torch.rand(2, 2, 48, 48)
    y, levels = net(x), AllLevels(net)(x)
    assert [tuple(level.shape[2:]) for level in levels] == [(6, 6), (9, 9), (15, 15)]
    assert torch.equal(y, levels[-1]) and y.shape == (2, 2, 15, 15)
    # the training view adds no parameters and no key prefix to the network's own state
    assert list(dict(AllLevels(net).network.state_dict())) == list(net.state_dict())
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
    ml = MultiLevelRegistrationLoss([BSplineToDDF(8), BSplineToDDF(4)], [0.25, 0.75], **terms)
    levels = AllLevels(net)(x)
    total = ml(levels, targets)
    single = [RegistrationLoss(pred_to_ddf=BSplineToDDF(s), **terms)(lv, targets) for s, lv in zip((8, 4), levels)]
    assert torch.allclose(total, 0.25 * single[0] + 0.75 * single[1], atol=1e-6)
    total.backward()
    assert all(p.grad is not None for p in net.heads.parameters())
    assert not any(name.startswith("network") for name in dict(ml.named_modules()))  # the loss holds no network


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
    """Given DistributedDataParallel around the training view (one CPU process, gloo on a file store), the levels come
    out of DDP's own forward: the same total as without the wrapper, gradients in every level's head, not a silent
    single-level loss."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    net, x, targets, terms = _multilevel_setup()
    loss = MultiLevelRegistrationLoss([BSplineToDDF(8), BSplineToDDF(4)], [0.25, 0.75], **terms)
    expected = loss(AllLevels(net)(x), targets)
    finest_only = RegistrationLoss(pred_to_ddf=BSplineToDDF(4), **terms)(net(x), targets)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(AllLevels(net))
        levels = ddp(x)
        total = loss(levels, targets)
        total.backward()
    finally:
        dist.destroy_process_group()
    assert isinstance(levels, list) and len(levels) == 2
    assert torch.allclose(total, expected, atol=1e-6)
    assert not torch.allclose(total, finest_only, atol=1e-4)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.heads[0].parameters())  # coarse level too


def test_multilevel_loss_rejects_a_level_count_that_does_not_match():
    net, x, targets, terms = _multilevel_setup()
    three = MultiLevelRegistrationLoss([BSplineToDDF(16), BSplineToDDF(8), BSplineToDDF(4)], **terms)
    with pytest.raises(ValueError, match="holds 2 level\\(s\\) for 3 level_to_ddf"):
        three(AllLevels(net)(x), targets)
    two = MultiLevelRegistrationLoss([BSplineToDDF(8), BSplineToDDF(4)], **terms)
    with pytest.raises(ValueError, match="holds 1 level\\(s\\).*wrapped in common.methods.ngf_bspline.AllLevels"):
        two(net(x), targets)  # the plain network's one tensor: an error, not the finest level alone
    with pytest.raises(TypeError, match="no forward_levels"):
        AllLevels(torch.nn.Linear(2, 2))
