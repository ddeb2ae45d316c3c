"""Blocks: warp, labels, resize, integration, composition, affine, B-spline, Jacobian."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from common.blocks import (
    AffineTransform,
    BSplineTransformer,
    VelocityIntegrator,
    affine_normalised_to_voxel,
    affine_to_ddf,
    compose_ddf,
    control_grid_shape,
    ddf_to_affine,
    identity_affine,
    integrate_velocity,
    jacobian_determinant,
    one_hot,
    resize_flow,
    warp,
    warp_labels,
)
from common.conventions import identity_grid


def smooth_field(shape, amplitude=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = len(shape)
    coarse = torch.randn(1, dims, *([3] * dims), generator=g) * amplitude
    mode = "bilinear" if dims == 2 else "trilinear"
    return torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=True)


# ---------------------------------------------------------------- gradchecks (float64, tiny)
def test_gradcheck_warp():
    image = torch.randn(1, 2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    ddf = (torch.rand(1, 3, 4, 5, 3, dtype=torch.float64) * 0.6 + 0.2).requires_grad_()
    assert gradcheck(lambda i, d: warp(i, d), (image, ddf), eps=1e-6, atol=1e-4)


def test_gradcheck_scaling_and_squaring():
    svf = (torch.rand(1, 2, 5, 5, dtype=torch.float64) * 0.4 + 0.05).requires_grad_()
    assert gradcheck(lambda v: integrate_velocity(v, num_steps=3), (svf,), eps=1e-6, atol=1e-4)


@pytest.mark.parametrize("dims", [2, 3])
def test_gradcheck_bspline(dims):
    shape = (7,) * dims
    c = control_grid_shape(shape, 3)
    cp = torch.randn(1, dims, *c, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x: BSplineTransformer(3)(x, shape), (cp,), eps=1e-6, atol=1e-6)


def test_gradcheck_affine_resize_compose():
    m = (identity_affine(1, 2, torch.float64) + 0.05 * torch.randn(1, 2, 3, dtype=torch.float64)).requires_grad_()
    assert gradcheck(lambda a: affine_to_ddf(a, (4, 5)), (m,), eps=1e-6, atol=1e-6)
    f = torch.randn(1, 3, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x: resize_flow(x, (5, 6, 4)), (f,), eps=1e-6, atol=1e-6)
    a = (torch.rand(1, 2, 4, 4, dtype=torch.float64) * 0.5 + 0.1).requires_grad_()
    b = (torch.rand(1, 2, 4, 4, dtype=torch.float64) * 0.5 + 0.1).requires_grad_()
    assert gradcheck(compose_ddf, (a, b), eps=1e-6, atol=1e-4)


# ---------------------------------------------------------------- behaviour
def test_compose_equals_sequential_warps():
    shape = (24, 26, 22)
    g = identity_grid(shape)
    image = torch.sin(g[:, :1] / 3) + torch.cos(g[:, 1:2] / 4) * torch.sin(g[:, 2:3] / 5)
    a, b = smooth_field(shape, 1.5, 1), smooth_field(shape, 1.5, 2)
    twice = warp(warp(image, a), b)
    once = warp(image, compose_ddf(a, b))
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    assert (twice - once)[inner].abs().max() < 0.05


def test_exp_of_minus_v_inverts_exp_of_v():
    shape = (20, 20, 20)
    v = smooth_field(shape, 2.0, 3)
    fwd, inv = integrate_velocity(v), integrate_velocity(-v)
    residual = compose_ddf(fwd, inv)  # warping by fwd then inv ~ identity
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    assert residual[inner].abs().max() < 0.1
    assert fwd.abs().max() > 1.0  # the test is not trivial


def test_integrated_field_is_diffeomorphic_where_raw_field_folds():
    shape = (24, 24)
    v = smooth_field(shape, 6.0, 4)
    assert (jacobian_determinant(v) <= 0).any()  # used as a displacement, it folds
    assert (jacobian_determinant(VelocityIntegrator(7)(v)) > 0).all()


def test_affine_identity_translation_rotation():
    shape = (9, 11, 13)
    assert affine_to_ddf(identity_affine(2, 3), shape).abs().max() == 0
    m = identity_affine(1, 3)
    m[0, :, 3] = torch.tensor([1.0, -2.0, 0.5])
    ddf = affine_to_ddf(m, shape)
    assert torch.allclose(ddf[0, :, 0, 0, 0], torch.tensor([1.0, -2.0, 0.5]))
    assert torch.allclose(ddf.flatten(2).std(-1), torch.zeros(1, 3), atol=1e-6)
    # rotation about axis 2 by 90 degrees keeps the centre fixed
    rot = identity_affine(1, 3)
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    rot[0, :2, :2] = torch.tensor([[c, -s], [s, c]])
    d = affine_to_ddf(rot, (9, 9, 9))
    assert d[0, :, 4, 4, 4].abs().max() < 1e-6
    assert torch.allclose(d[0, :, 4, 5, 4], torch.tensor([-1.0, -1.0, 0.0]), atol=1e-5)


def test_affine_transform_warps_image():
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 5, 4] = 1.0
    m = identity_affine(1, 2)
    m[0, 0, 2] = 1.0  # pull from one voxel further along axis 0
    warped, ddf = AffineTransform()(image, m)
    assert warped[0, 0, 4, 4] == pytest.approx(1.0)
    assert ddf.shape == (1, 2, 9, 9)


@pytest.mark.parametrize("dims", [2, 3])
def test_bspline_reproduces_constant_and_linear_fields(dims):
    shape = (13,) * dims
    stride = 4
    c = control_grid_shape(shape, stride)
    const = torch.full((1, dims, *c), 1.7)
    out = BSplineTransformer(stride)(const, shape)
    assert out.shape == (1, dims, *shape)
    assert torch.allclose(out, torch.full_like(out, 1.7), atol=1e-5)
    # control point j sits at voxel (j - 1) * stride: a linear ramp of control points is a linear field
    cp_pos = identity_grid(c)[:, :1].repeat(1, dims, *([1] * dims))
    lin = (cp_pos - 1) * stride * 0.1
    out = BSplineTransformer(stride)(lin, shape)
    expected = identity_grid(shape)[:, :1].repeat(1, dims, *([1] * dims)) * 0.1
    assert torch.allclose(out, expected, atol=1e-5)


def test_bspline_local_support():
    shape = (20, 20)
    c = control_grid_shape(shape, 4)
    cp = torch.zeros(1, 2, *c)
    cp[0, 0, 3, 3] = 1.0  # at voxel (8, 8)
    out = BSplineTransformer(4)(cp, shape)[0, 0]
    assert out[8, 8] == pytest.approx((2 / 3) ** 2, rel=1e-5)
    assert out[0, 0] == 0 and out[16, 16] == 0  # beyond 2 * stride


def test_warp_labels_integer_shift_is_exact_and_onehot_soft():
    labels = torch.zeros(1, 1, 10, 10, dtype=torch.long)
    labels[0, 0, 2:5, 3:7] = 1
    labels[0, 0, 6:9, 1:4] = 2
    ddf = torch.zeros(1, 2, 10, 10)
    ddf[:, 1] = -1.0
    out = warp_labels(labels, ddf)
    assert out.dtype == torch.long
    assert torch.equal(out[0, 0, :, 1:], labels[0, 0, :, :-1])
    soft = warp_labels(labels, ddf * 0.5, return_one_hot=True)
    assert soft.shape == (1, 3, 10, 10)
    assert torch.allclose(soft.sum(1), torch.ones(1, 10, 10), atol=1e-6)


def test_warp_broadcasts_a_single_field_over_the_batch_and_follows_dtype():
    image = torch.randn(3, 1, 6, 6)
    ddf = torch.zeros(1, 2, 6, 6)
    assert torch.allclose(warp(image, ddf), image, atol=1e-6)
    assert warp(image.double(), ddf.double()).dtype == torch.float64


def test_resize_flow_half_res_is_about_two_voxels():
    f = torch.ones(1, 3, 80, 96, 112)
    up = resize_flow(f, (160, 192, 224))
    assert up[0, 0].mean().item() == pytest.approx(159 / 79, rel=1e-5)
    assert up[0, 2].mean().item() == pytest.approx(223 / 111, rel=1e-5)


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "image_shape, ddf_shape, match",
    [
        ((1, 1, 8, 8, 8), (1, 2, 8, 8, 8), "channels but 3 spatial dims"),
        ((1, 1, 8, 8, 8), (1, 2, 8, 8), "differ in rank"),
        ((1, 1, 8, 8, 8), (1, 3, 8, 8, 7), "spatial shapes differ"),
        ((2, 1, 8, 8), (3, 2, 8, 8), "batch sizes differ"),
        ((1, 1, 8), (1, 1, 8), "2 or 3 spatial dims"),
    ],
)
def test_warp_rejects_bad_shapes(image_shape, ddf_shape, match):
    with pytest.raises(ValueError, match=match):
        warp(torch.zeros(image_shape), torch.zeros(ddf_shape))


def test_bad_values_and_types():
    ddf = torch.zeros(1, 2, 4, 4)
    ddf[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="Warp: `ddf` contains NaN"):
        warp(torch.zeros(1, 1, 4, 4), ddf)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        warp(torch.zeros(1, 1, 4, 4), [[0.0]])
    with pytest.raises(ValueError, match="resize_flow: `size`"):
        resize_flow(torch.zeros(1, 2, 4, 4), (8, 8, 8))
    with pytest.raises(ValueError, match="affine_to_ddf: `matrix`"):
        affine_to_ddf(torch.zeros(1, 3, 3), (4, 4, 4))
    with pytest.raises(ValueError, match="control grid .* too small"):
        BSplineTransformer(4)(torch.zeros(1, 2, 3, 3), (20, 20))
    with pytest.raises(ValueError, match="one_hot: `labels` has value 3"):
        one_hot(torch.full((1, 1, 2, 2), 3), num_classes=3)


@pytest.mark.parametrize("shape", [(9, 7), (6, 8, 5)])
def test_ddf_to_affine_inverts_affine_to_ddf(shape):
    dims = len(shape)
    m = identity_affine(2, dims) + 0.1 * torch.randn(2, dims, dims + 1, generator=torch.Generator().manual_seed(3))
    m[:, :, dims] *= 20  # translations of a few voxels
    back = ddf_to_affine(affine_to_ddf(m, shape))
    assert back.shape == m.shape and torch.allclose(back, m, atol=1e-5)


def test_ddf_to_affine_is_the_least_squares_fit_of_a_non_affine_field():
    m = identity_affine(1, 3)
    m[0, 0, 3] = 2.0
    ddf = affine_to_ddf(m, (8, 8, 8)) + 0.3 * smooth_field((8, 8, 8), seed=1)
    fit = ddf_to_affine(ddf)
    residual = (ddf - affine_to_ddf(fit, (8, 8, 8))).pow(2).sum()
    for delta in (0.01, -0.01):  # any nudge of the fit increases the squared residual
        for i, j in ((0, 0), (0, 3), (2, 1)):
            other = fit.clone()
            other[0, i, j] += delta
            assert (ddf - affine_to_ddf(other, (8, 8, 8))).pow(2).sum() > residual


@pytest.mark.parametrize(
    "ddf, match",
    [(torch.zeros(1, 2, 4, 4, 4), "D = 2 or 3"), (torch.zeros(3, 4, 4), "D = 2 or 3"),
     (torch.full((1, 2, 4, 4), float("nan")), "NaN")],
)  # fmt: skip
def test_ddf_to_affine_rejects_bad_fields(ddf, match):
    with pytest.raises(ValueError, match=match):
        ddf_to_affine(ddf)


def test_normalised_to_voxel_scales_each_axis_by_its_half_size():
    delta = torch.zeros(1, 2, 3)
    delta[0, 0, 2], delta[0, 1, 2] = 1.0, -0.5  # translations: a half-size along axis 0, a quarter size along 1
    delta[0, 0, 1] = 0.2  # axis-0 output per unit of normalised axis-1 input
    out = affine_normalised_to_voxel(delta, (11, 21))  # half sizes 5 and 10 voxels
    assert out[0, 0, 2] == pytest.approx(5.0) and out[0, 1, 2] == pytest.approx(-5.0)
    assert out[0, 0, 1] == pytest.approx(0.2 * 5 / 10)
    # the same map in either system: a normalised point p goes to p + dA p + dt, the voxel point x = H p likewise
    p = torch.tensor([0.3, -0.7])
    h = torch.tensor([5.0, 10.0])
    moved_n = p + delta[0, :, :2] @ p + delta[0, :, 2]
    moved_v = h * p + out[0, :, :2] @ (h * p) + out[0, :, 2]
    assert torch.allclose(moved_v, h * moved_n)


def test_pair_one_hot_gives_both_sides_one_class_count():
    from common.blocks import pair_one_hot

    ml = torch.tensor([[[[0, 1], [2, 2]]]])
    fl = torch.tensor([[[[0, 4], [1, 0]]]])
    moh, foh, k = pair_one_hot(ml, fl)
    assert k == 5 and moh.shape == foh.shape == (1, 5, 2, 2)
    assert torch.equal(moh.argmax(1, keepdim=True), ml) and torch.equal(foh.argmax(1, keepdim=True), fl)
    assert pair_one_hot(ml, fl, num_classes=7)[2] == 7
