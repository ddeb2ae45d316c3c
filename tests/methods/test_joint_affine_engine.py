"""Zhu et al. 2020 engine pieces: splitting the joint prediction, the displacement adapter and the loss."""

from __future__ import annotations

import math

import pytest
import torch

from common.blocks import affine_to_ddf, one_hot, resize_flow, warp
from common.engines import RegistrationEvalPostprocess
from common.losses import GlobalNCCLoss, GradientRegulariser, LocalNCCLoss, SoftDiceLoss
from common.methods.joint_affine import JointAffineDeformNet
from common.methods.joint_affine.engine import AffineRefinementInferer, JointAffineDeformLoss, JointToDDF, split_joint


def _blobs(shape: tuple[int, int], offset: tuple[float, float]) -> torch.Tensor:
    """Two Gaussian blobs (an asymmetric 2D image), shifted by ``offset`` voxels."""
    g = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    out = torch.zeros(shape)
    for centre, width, amp in (((16.0, 16.0), 20.0, 1.0), ((10.0, 20.0), 6.0, 0.7)):
        c = (torch.tensor(centre) + torch.tensor(offset)).view(2, 1, 1)
        out = out + amp * torch.exp(-((g - c) ** 2).sum(0) / width)
    return out[None, None]


def _pred(dims: int = 2, size: tuple[int, ...] = (24, 24), scale: float = 0.5) -> torch.Tensor:
    return scale * torch.randn(1, 3 * dims, *size)


def _targets(size=(24, 24), labels: bool = False) -> dict[str, torch.Tensor]:
    t = {"moving_image": torch.rand(1, 1, *size), "fixed_image": torch.rand(1, 1, *size)}
    if labels:
        t["moving_label"] = torch.randint(0, 3, (1, 1, *size))
        t["fixed_label"] = torch.randint(0, 3, (1, 1, *size))
    return t


@pytest.mark.parametrize("dims, size", [(2, (6, 5)), (3, (4, 5, 6))])
def test_split_joint_returns_the_three_fields_in_order(dims, size):
    pred = torch.arange(3 * dims, dtype=torch.float32).view(1, 3 * dims, *([1] * dims)).expand(2, 3 * dims, *size)
    total, aff, u = split_joint(pred)
    assert total.shape == aff.shape == u.shape == (2, dims, *size)
    assert [float(f[0, 0].flatten()[0]) for f in (total, aff, u)] == [0.0, dims, 2 * dims]


@pytest.mark.parametrize(
    "pred, match",
    [
        (torch.zeros(1, 4, 8, 8), r"split_joint: expected \(B, 6, \*S\).*got shape \(1, 4, 8, 8\)"),
        (torch.zeros(1, 6, 8, 8, 8), r"split_joint: expected \(B, 9, \*S\).*got shape \(1, 6, 8, 8, 8\)"),
        (torch.zeros(1, 6, 8), r"split_joint: expected .*got shape \(1, 6, 8\)"),
    ],
)
def test_split_joint_rejects_other_shapes(pred, match):
    with pytest.raises(ValueError, match=match):
        split_joint(pred)


@pytest.mark.parametrize("component, index", [("total", 0), ("affine", 1), ("deformable", 2)])
def test_joint_to_ddf_picks_a_component_and_resizes(component, index):
    pred = _pred(size=(9, 9))
    field = split_joint(pred)[index]
    adapter = JointToDDF(component)
    assert torch.equal(adapter(pred, (9, 9)), field)
    assert torch.allclose(adapter(pred, (17, 17)), resize_flow(field, (17, 17)))
    assert adapter.native_shape(pred) == (9, 9)


def test_joint_to_ddf_rejects_unknown_component():
    with pytest.raises(ValueError, match="JointToDDF: component must be one of"):
        JointToDDF("rigid")


def test_existing_eval_postprocess_uses_the_total_field():
    pred, targets = _pred(), _targets(labels=True)
    out = RegistrationEvalPostprocess(JointToDDF(), num_classes=3)({"pred": pred, "label": targets})
    assert torch.equal(out["ddf"], pred[:, :2])
    assert out["warped_label"].shape == (1, 3, 24, 24)


def test_loss_terms_are_the_documented_losses_of_the_right_fields():
    pred, targets = _pred(), _targets(labels=True)
    total, aff, u = split_joint(pred)
    m, f = targets["moving_image"], targets["fixed_image"]
    loss = JointAffineDeformLoss(affine_weight=0.5, sim_weight=2.0, anat_weight=0.3, smooth_weight=0.7, lncc_kernel=5)
    value = loss(pred, targets)
    expected = {
        "affine_ncc": GlobalNCCLoss()(warp(m, aff), f),
        "local_ncc": LocalNCCLoss(kernel_size=5)(warp(m, total), f),
        "dice": SoftDiceLoss(include_background=False)(
            warp(one_hot(targets["moving_label"], 3), total), one_hot(targets["fixed_label"], 3)
        ),
        "smooth": GradientRegulariser()(u),
    }
    assert set(loss.last_terms) == {*expected, "total"}
    for key, ref in expected.items():
        assert math.isclose(loss.last_terms[key], float(ref), rel_tol=1e-5, abs_tol=1e-7), key
    weighted = 0.5 * expected["affine_ncc"] + 2.0 * expected["local_ncc"] + 0.3 * expected["dice"]
    assert torch.allclose(value, weighted + 0.7 * expected["smooth"], atol=1e-6)
    assert math.isclose(loss.last_terms["total"], float(value), rel_tol=1e-6)
    # the smoothness term sees only the deformable field: a scaling affine with u = 0 is not penalised
    matrix = torch.tensor([[[1.1, 0.0, 0.5], [0.0, 0.9, -1.0]]])
    aff_only = affine_to_ddf(matrix, (24, 24))
    loss(torch.cat([aff_only, aff_only, torch.zeros_like(aff_only)], 1), targets)
    assert loss.last_terms["smooth"] == 0.0 and float(GradientRegulariser()(aff_only)) > 1e-3


def test_identical_images_and_zero_fields_give_zero_loss():
    image = _blobs((24, 24), (-4.0, -4.0))
    lab = (image > 0.5).long()
    targets = {"moving_image": image, "fixed_image": image, "moving_label": lab, "fixed_label": lab}
    loss = JointAffineDeformLoss()
    assert float(loss(torch.zeros(1, 6, 24, 24), targets)) < 1e-4
    assert all(abs(v) < 1e-4 for v in loss.last_terms.values())


@pytest.mark.parametrize(
    "weights, labels, keys",
    [
        ({}, True, {"affine_ncc", "local_ncc", "dice", "smooth"}),
        ({}, False, {"affine_ncc", "local_ncc", "smooth"}),
        ({"anat_weight": 0.0}, True, {"affine_ncc", "local_ncc", "smooth"}),
        ({"affine_weight": 0.0, "smooth_weight": 0.0}, True, {"local_ncc", "dice"}),
        ({"sim_weight": 0.0, "anat_weight": 0.0, "smooth_weight": 0.0}, True, {"affine_ncc"}),
    ],
)
def test_terms_with_zero_weight_or_without_labels_are_skipped(weights, labels, keys):
    loss = JointAffineDeformLoss(**weights)
    loss(_pred(), _targets(labels=labels))
    assert set(loss.last_terms) == keys | {"total"}


@pytest.mark.parametrize("axis, shift", [(0, 3.0), (1, -3.0)])
def test_adam_steps_on_the_affine_loss_recover_a_translation(axis, shift):
    offset = [0.0, 0.0]
    offset[axis] = shift
    fixed, moving = _blobs((32, 32), (0.0, 0.0)), _blobs((32, 32), tuple(offset))
    net = JointAffineDeformNet(2, enc_channels=(8, 8, 8, 8), dec_channels=(8, 8, 8), use_deformable=False)
    loss = JointAffineDeformLoss(sim_weight=0.0, smooth_weight=0.0)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, targets = torch.cat([moving, fixed], 1), {"moving_image": moving, "fixed_image": fixed}
    history = []
    for _ in range(12):
        optimiser.zero_grad()
        loss(net(x), targets).backward()
        optimiser.step()
        history.append(loss.last_terms["affine_ncc"])
    with torch.no_grad():
        t = net.affine_matrix(x)[0, :, 2]
    assert history[-1] < 0.25 * history[0]
    # pull-back: moving content sits at +shift, so the fixed grid samples the moving image at x + shift
    assert math.copysign(1.0, float(t[axis])) == math.copysign(1.0, shift)
    assert abs(float(t[axis]) - shift) < 1.0 and abs(float(t[1 - axis])) < 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"affine_weight": -1.0}, r"`affine_weight` must be a finite number >= 0, got -1.0"),
        ({"smooth_weight": float("nan")}, r"`smooth_weight` must be a finite number >= 0"),
        ({"affine_weight": 0, "sim_weight": 0, "anat_weight": 0, "smooth_weight": 0}, "every weight is 0"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"lncc_kernel": 4}, "kernel_size"),
    ],
)
def test_loss_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JointAffineDeformLoss(**kwargs)


def test_loss_rejects_mismatched_inputs():
    loss = JointAffineDeformLoss()
    with pytest.raises(ValueError, match=r"JointAffineDeformLoss: `pred` \(1, 6, 24, 24\).*\(1, 1, 16, 16\)"):
        loss(_pred(), _targets(size=(16, 16)))
    with pytest.raises(ValueError, match=r"split_joint: expected \(B, 6, \*S\)"):
        loss(torch.zeros(1, 2, 24, 24), _targets())
    with pytest.raises(KeyError, match="JointAffineDeformLoss: `targets` has no `fixed_image`"):
        loss(_pred(), {"moving_image": torch.rand(1, 1, 24, 24)})


def _rotated_pair(size: int = 32, degrees: float = 12.0, shift: float = 2.0) -> torch.Tensor:
    """``[moving, fixed]``: the moving image is the fixed one under a known rotation and shift (pull-back)."""
    fixed = _blobs((size, size), (0.0, 0.0))
    a = math.radians(degrees)
    matrix = torch.tensor([[[math.cos(a), -math.sin(a), shift], [math.sin(a), math.cos(a), -shift]]])
    # the fixed image sampled at A (x - c) + c + t is the moving image seen through the inverse map
    inverse = torch.linalg.inv(torch.cat([matrix, torch.tensor([[[0.0, 0.0, 1.0]]])], 1))[:, :2]
    moving = warp(fixed, affine_to_ddf(inverse, (size, size)))
    return torch.cat([moving, fixed], 1), matrix


def test_affine_refinement_recovers_a_rotation_the_network_did_not_predict():
    torch.manual_seed(0)
    x, truth = _rotated_pair()
    net = JointAffineDeformNet(2, enc_channels=(8, 8, 8, 8), dec_channels=(8, 8, 8)).eval()  # identity head
    inferer = AffineRefinementInferer(iterations=150, lr=0.02, progress=False)
    with torch.no_grad():
        refined = inferer.refine(net, x)
        pred = inferer(x, net)
    assert torch.allclose(net.affine_matrix(x), torch.eye(2, 3)[None])  # the untrained head says identity
    assert len(inferer.history) == 151 and inferer.seconds > 0
    assert min(inferer.history) < 0.1 * inferer.history[0]
    angle = math.degrees(math.atan2(float(refined[0, 1, 0]), float(refined[0, 0, 0])))
    assert abs(angle - 12.0) < 1.5, angle
    assert torch.allclose(refined[0, :, 2], truth[0, :, 2], atol=0.6), refined
    # the prediction carries the refined map in its affine channels and the total starts from it
    assert torch.allclose(split_joint(pred)[1], affine_to_ddf(refined, x.shape[2:]), atol=1e-5)
    # and the deformable part registers M warped by the refined map, not by the network's own
    with torch.no_grad():
        assert torch.allclose(pred, net.forward_with_affine(x, refined))
        assert not torch.allclose(pred, net(x))


def test_affine_refinement_keeps_the_best_parameters_and_zero_iterations_is_the_plain_network():
    x, _ = _rotated_pair()
    net = JointAffineDeformNet(2, enc_channels=(8, 8, 8, 8), dec_channels=(8, 8, 8)).eval()
    with torch.no_grad():
        assert torch.equal(AffineRefinementInferer(iterations=0)(x, net), net(x))
        # a step far too large overshoots; the network's own matrix (the best seen) is returned
        wild = AffineRefinementInferer(iterations=3, lr=5.0, progress=False)
        matrix = wild.refine(net, x)
    loss = GlobalNCCLoss()
    scored = float(loss(warp(x[:, :1], affine_to_ddf(matrix, x.shape[2:])), x[:, 1:]))
    assert scored == pytest.approx(min(wild.history), abs=1e-6)
    # every step overshot (the check below is not vacuous), so the returned map is the network's own
    assert min(wild.history[1:]) > wild.history[0] + 0.5
    assert torch.equal(matrix, net.affine_matrix(x))


def test_affine_refinement_rejects_bad_settings_and_other_networks():
    with pytest.raises(ValueError, match="iterations must be >= 0, got -1"):
        AffineRefinementInferer(iterations=-1)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got 0"):
        AffineRefinementInferer(lr=0)
    with pytest.raises(TypeError, match="Conv2d has no forward_with_affine"):
        AffineRefinementInferer(iterations=2)(torch.rand(1, 2, 8, 8), torch.nn.Conv2d(2, 4, 1))


def test_forward_with_affine_checks_the_matrix():
    net = JointAffineDeformNet(2, enc_channels=(8, 8, 8, 8), dec_channels=(8, 8, 8)).eval()
    x = torch.rand(1, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(net.forward_with_affine(x, net.affine_matrix(x)), net(x))
    with pytest.raises(ValueError, match=r"`matrix` must have shape \(1, 2, 3\) for this input, got \(1, 3, 4\)"):
        net.forward_with_affine(x, torch.eye(3, 4)[None])
    with pytest.raises(ValueError, match="NaN or Inf"):
        net.forward_with_affine(x, torch.full((1, 2, 3), float("nan")))
