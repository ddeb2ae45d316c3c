"""Regularisers: gradients, null spaces (affine/translation), known values, agreement with MONAI, errors."""

from __future__ import annotations

import pytest
import torch
from loss_helpers import affine_field, grid, smooth_field
from monai.losses import BendingEnergyLoss, DiffusionLoss
from torch.autograd import gradcheck

from common.losses import BendingEnergyRegulariser, CurvatureRegulariser, FoldingPenalty, GradientRegulariser

SHAPES = {2: (12, 10), 3: (9, 8, 7)}
REGULARISERS = {
    "gradient_l2": lambda: GradientRegulariser("l2"),
    "gradient_l1": lambda: GradientRegulariser("l1"),
    "curvature": lambda: CurvatureRegulariser(),
    "bending": lambda: BendingEnergyRegulariser(),
}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(REGULARISERS))
@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck(name, dims, with_mask):
    shape = (5,) * dims
    ddf = torch.randn(1, dims, *shape, dtype=torch.float64).requires_grad_()
    mask = torch.rand(1, 1, *shape, dtype=torch.float64) if with_mask else None
    reg = REGULARISERS[name]()
    assert gradcheck(lambda u: reg(u, mask), (ddf,), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_affine_fields(dims, seed):
    ddf, a = affine_field(SHAPES[dims], seed)
    assert float(CurvatureRegulariser()(ddf)) < 1e-10
    assert float(BendingEnergyRegulariser()(ddf)) < 1e-10
    # first-order energy is zero only for translations; on A x + t it is the mean of A's squared entries
    assert float(GradientRegulariser("l2")(ddf)) == pytest.approx(float((a**2).mean()), rel=1e-9)
    assert float(GradientRegulariser("l1")(ddf)) == pytest.approx(float(a.abs().mean()), rel=1e-9)
    translation = ddf - ddf + torch.randn(1, dims, *([1] * dims), dtype=torch.float64)
    for reg in REGULARISERS.values():
        assert float(reg()(translation)) < 1e-10


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(REGULARISERS))
def test_positive_on_smooth_non_affine_fields_and_quadratic_in_amplitude(name, dims):
    ddf = smooth_field(SHAPES[dims], seed=dims)
    reg = REGULARISERS[name]()
    value = float(reg(ddf))
    assert value > 1e-4
    scale = 2.0 if name == "gradient_l1" else 4.0  # l1 is 1-homogeneous, the others 2-homogeneous
    assert float(reg(2.0 * ddf)) == pytest.approx(scale * value)


def test_curvature_known_value():
    # u_0 = x0^2 / 2 has Laplacian 1 everywhere: energy 1/2 per voxel; u_1 = x0 * x1 is harmonic
    x0, x1 = grid((7, 6))
    ddf = torch.stack([x0**2 / 2, x0 * x1])[None]
    assert float(CurvatureRegulariser()(ddf)) == pytest.approx(0.5)
    values = CurvatureRegulariser(reduction="none")(ddf)
    assert values.shape == (1, 1, 5, 4)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")
@pytest.mark.parametrize("dims", [2, 3])
def test_bending_matches_monai_and_documents_its_normalisation(dims):
    ddf = smooth_field(SHAPES[dims], seed=3) + torch.randn(1, dims, *SHAPES[dims], dtype=torch.float64)
    assert float(BendingEnergyRegulariser()(ddf)) == pytest.approx(float(BendingEnergyLoss()(ddf)), rel=1e-12)
    # u_0 = x0 * x1 in 2D: one mixed derivative 1, counted twice, averaged over D = 2 components -> 1
    x0, x1 = grid((6, 6))
    ddf2 = torch.stack([x0 * x1, torch.zeros_like(x0)])[None]
    assert float(BendingEnergyRegulariser()(ddf2)) == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")
def test_gradient_sees_checkerboards_unlike_monai_diffusion():
    # MONAI's central differences are blind to an alternating field; forward differences are not
    x0, x1 = grid((8, 8))
    board = ((x0 + x1) % 2 * 2 - 1)[None, None].repeat(1, 2, 1, 1)
    assert float(DiffusionLoss()(board)) == pytest.approx(0.0, abs=1e-12)
    assert float(GradientRegulariser()(board)) == pytest.approx(4.0)  # every difference is +-2, squared 4


@pytest.mark.parametrize("name", list(REGULARISERS))
def test_mask_and_reductions(name):
    ddf = smooth_field((10, 10), seed=5)
    reg = REGULARISERS[name]()
    reg.reduction = "none"
    values = reg(ddf)
    assert values.shape[:2] == (1, 1)
    mask = torch.zeros(1, 1, 10, 10, dtype=torch.float64)
    mask[..., :5, :] = 1
    start = 1 if name in ("curvature", "bending") else 0
    cropped = mask[..., start : start + values.shape[2], start : start + values.shape[3]]
    reg.reduction = "mean"
    assert float(reg(ddf, mask)) == pytest.approx(float((values * cropped).sum() / cropped.sum()))
    reg.reduction = "sum"
    assert float(reg(ddf)) == pytest.approx(float(values.sum()))


ERRORS = [
    ("channels", lambda: torch.zeros(1, 3, 6, 6), r"has 3 channels but 2 spatial dims"),
    ("rank", lambda: torch.zeros(1, 1, 6), r"2 or 3 spatial dims"),
    ("nan", lambda: torch.full((1, 2, 6, 6), float("nan")), r"NaN or Inf"),
    ("too small", lambda: torch.zeros(1, 2, 6, 2), r"at least 3 voxels.*\(1, 2, 6, 2\)"),
]


@pytest.mark.parametrize("name", ["curvature", "bending", "gradient_l2"])
@pytest.mark.parametrize("case,make,match", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors(name, case, make, match):
    reg = REGULARISERS[name]()
    if case == "too small" and name.startswith("gradient"):
        make, match = (lambda: torch.zeros(1, 2, 6, 1)), r"at least 2 voxels"
    with pytest.raises(ValueError, match=rf"^{type(reg).__name__}: .*{match}"):
        reg(make())


def test_mask_and_option_errors():
    with pytest.raises(ValueError, match=r"^CurvatureRegulariser: `mask` must have shape \(2, 1, 6, 6\)"):
        CurvatureRegulariser()(torch.zeros(2, 2, 6, 6), torch.ones(2, 2, 6, 6))
    with pytest.raises(ValueError, match=r"^GradientRegulariser: `penalty` must be 'l1' or 'l2'"):
        GradientRegulariser("l3")
    with pytest.raises(ValueError, match=r"^BendingEnergyRegulariser: `reduction` must be one of"):
        BendingEnergyRegulariser(reduction="batchmean")


# -- folding penalty -------------------------------------------------------------------------------------------------
def _forward_det(ddf: torch.Tensor) -> torch.Tensor:
    """Reference: forward-difference ``det(I + grad u)`` per voxel with ``torch.linalg.det`` on the common domain."""
    dims = ddf.shape[1]
    crop = (slice(None), slice(None)) + (slice(0, -1),) * dims
    cols = []
    for k in range(dims):
        shifted = (slice(None), slice(None)) + tuple(slice(1, None) if j == k else slice(0, -1) for j in range(dims))
        cols.append(ddf[shifted] - ddf[crop])
    jac = torch.stack(cols, dim=2) + torch.eye(dims, dtype=ddf.dtype).view(1, dims, dims, *([1] * dims))
    return torch.linalg.det(jac.movedim(1, -1).movedim(1, -1))


@pytest.mark.parametrize("dims", [2, 3])
def test_folding_penalty_matches_a_direct_determinant(dims):
    torch.manual_seed(dims)
    ddf = 0.6 * torch.randn(1, dims, *SHAPES[dims], dtype=torch.float64)  # rough: many folded voxels
    det = _forward_det(ddf)
    assert (det < 0).any() and (det > 0.05).any()
    expected = torch.relu(0.05 - det).pow(2)
    assert float(FoldingPenalty()(ddf)) == pytest.approx(float(expected.mean()), rel=1e-12)
    per_voxel = FoldingPenalty(margin=0.0, reduction="none")(ddf)
    assert per_voxel.shape == (1, 1, *(n - 1 for n in SHAPES[dims]))
    assert torch.equal(per_voxel[0, 0] > 0, det[0] < 0)  # margin 0: exactly the folded voxels


@pytest.mark.parametrize("dims", [2, 3])
def test_folding_penalty_zero_without_folds_and_gradcheck(dims):
    ddf, _ = affine_field(SHAPES[dims], 0)
    assert float(FoldingPenalty()(0.1 * ddf)) == 0.0  # a mild affine map keeps det >= margin
    assert float(FoldingPenalty()(torch.zeros(1, dims, *SHAPES[dims]))) == 0.0
    # a fold: the first axis' displacement decreases by 1.5 voxels per voxel -> det = 1 - 1.5 < 0 everywhere
    folded = torch.zeros(1, dims, *SHAPES[dims], dtype=torch.float64)
    folded[:, 0] = -1.5 * grid(SHAPES[dims])[0]
    assert float(FoldingPenalty(margin=0.0)(folded)) == pytest.approx(0.25)
    rough = (0.6 * torch.randn(1, dims, *((5,) * dims), dtype=torch.float64)).requires_grad_()
    assert gradcheck(lambda u: FoldingPenalty()(u), (rough,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_folding_penalty_errors():
    with pytest.raises(ValueError, match="FoldingPenalty: `margin`"):
        FoldingPenalty(margin=1.0)
    with pytest.raises(ValueError, match="FoldingPenalty"):
        FoldingPenalty()(torch.zeros(1, 3, 1, 4, 4))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("make", [lambda: GradientRegulariser("l2"), lambda: FoldingPenalty()], ids=["l2", "fold"])
def test_lean_mean_path_equals_the_per_voxel_map(make, dims):
    """``reduction="mean"`` without a mask takes a path that recomputes differences in the backward pass (1 mm
    memory); its value and gradient equal the mean of the per-voxel map's."""
    torch.manual_seed(dims)
    ddf = (0.6 * torch.randn(1, dims, *SHAPES[dims], dtype=torch.float64)).requires_grad_()
    lean = make()(ddf)
    per_voxel = make()
    per_voxel.reduction = "none"
    mapped = per_voxel(ddf).mean()
    assert float(lean.detach()) == pytest.approx(float(mapped.detach()), rel=1e-12) and float(lean.detach()) > 0
    (g_lean,) = torch.autograd.grad(lean, ddf)
    (g_map,) = torch.autograd.grad(mapped, ddf)
    assert torch.allclose(g_lean, g_map, rtol=0, atol=1e-14)


def test_forward_jacobian_determinant_is_the_folding_penaltys_determinant():
    from common.losses.regularisers import forward_jacobian_determinant

    shape = (6, 7, 5)
    x = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))[None]
    det = forward_jacobian_determinant(0.1 * x)  # a 10 % scaling
    assert det.shape == (1, 5, 6, 4)
    assert torch.allclose(det, torch.full_like(det, 1.1**3))
    field = torch.randn(2, 3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.6
    # the mean path computes its determinant separately (_MeanFoldBarrier); the per-voxel path uses this function
    penalty = FoldingPenalty(margin=0.05, reduction="mean")(field)
    assert torch.allclose(penalty, (torch.relu(0.05 - forward_jacobian_determinant(field)) ** 2).mean())
    assert (forward_jacobian_determinant(field) < 0.05).any()  # the comparison covers penalised voxels
