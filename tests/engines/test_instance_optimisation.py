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


def _blob3d(shape, centre, width=20.0):
    g = identity_grid(shape)[0]
    c = torch.tensor(centre, dtype=torch.float32).view(-1, 1, 1, 1)
    return torch.exp(-((g - c) ** 2).sum(0) / width)[None, None]


def _centre_shift(ddf, lo=14, hi=18):
    return ddf[0, :, lo:hi, lo:hi, lo:hi].mean(dim=(1, 2, 3))


SHIFT = torch.tensor([2.0, -1.5, 1.0])  # fixed(x) = moving(x + SHIFT)


@pytest.mark.parametrize(
    "setting",
    [
        {"image_loss": "mind", "samples": 4096, "lr": 0.3},
        {"image_loss": "mind", "samples": 0, "lr": 0.3},
        {"image_loss": "lncc", "ncc_kernel": 7, "lr": 0.3},
        {"image_loss": "ssd", "samples": 4096, "lr": 0.3, "diffeomorphic": True},
        {"image_loss": ["lncc", "mind"], "ncc_kernel": 7, "samples": [0, 4096], "lr": 0.3},
        # LNCC on random foreground cubes at the finest level (4 cubes of 12^3 per step)
        {"image_loss": "lncc", "ncc_kernel": 5, "samples": [0, 4 * 12**3], "patch_size": 12, "lr": 0.3},
    ],
)
def test_coarse_to_fine_recovers_a_3d_shift(setting):
    fixed = _blob3d((32, 32, 32), (16.0, 16.0, 16.0))
    moving = _blob3d((32, 32, 32), tuple((16.0 + SHIFT).tolist()))
    opt = InstanceOptimiser(regulariser="diffusion", reg_weight=0.05, iterations=[60, 40], levels=[2, 1],
                            grid_factor=2, smoothing=1, progress=False, **setting)  # fmt: skip
    ddf = opt(moving, fixed)
    assert ddf.shape == (1, 3, 32, 32, 32)  # the finest level is the input grid
    assert len(opt.history) == 100
    assert torch.allclose(_centre_shift(ddf), SHIFT, atol=0.5), _centre_shift(ddf)


def test_starts_from_init_and_refines_only_the_residual():
    """From the right field nothing moves; from half of it the rest is found."""
    fixed = _blob3d((32, 32, 32), (16.0, 16.0, 16.0))
    moving = _blob3d((32, 32, 32), tuple((16.0 + SHIFT).tolist()))
    right = SHIFT.view(1, 3, 1, 1, 1).expand(1, 3, 32, 32, 32).clone()
    kw = {"image_loss": "mind", "samples": 4096, "reg_weight": 0.05, "levels": [1], "progress": False}
    kept = InstanceOptimiser(iterations=30, lr=0.05, **kw)(moving, fixed, init=right)
    assert torch.allclose(_centre_shift(kept), SHIFT, atol=0.2)
    half = 0.25 * right[:, :, ::2, ::2, ::2]  # half of the shift, on a half-resolution grid (voxels of that grid)
    found = InstanceOptimiser(iterations=60, lr=0.3, **kw)(moving, fixed, init=half)
    assert torch.allclose(_centre_shift(found), SHIFT, atol=0.5)


def test_zero_iterations_returns_init_on_the_input_grid():
    init = torch.randn(1, 3, 8, 8, 8)
    opt = InstanceOptimiser(iterations=0, levels=[2, 1], progress=False)
    out = opt(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8), init=init)
    assert torch.equal(out, init)


def test_lncc_by_name_uses_fixed_statistics_and_matches_the_lncc_module():
    """``image_loss="lncc"`` runs FixedImageLNCC (fixed statistics once, analytic gradient); the field equals the
    one optimised with the LocalNCCLoss module itself (float64: Adam's normalised steps would amplify float32
    rounding in the flat background)."""
    from common.losses import LocalNCCLoss

    fixed = _blob3d((24, 24, 24), (12.0, 12.0, 12.0)).double()
    moving = _blob3d((24, 24, 24), (13.0, 11.0, 12.5)).double()
    settings = {"iterations": [15, 10], "levels": [2, 1], "lr": 0.2, "ncc_kernel": 5, "progress": False}
    by_name = InstanceOptimiser("lncc", **settings)
    by_module = InstanceOptimiser(LocalNCCLoss(kernel_size=5), **settings)
    a, b = by_name(moving, fixed), by_module(moving, fixed)
    assert float(a.abs().max()) > 0.3  # it moved
    assert float((a - b).abs().max()) < 1e-6
    assert by_name.history[-1] < by_name.history[0]
    assert abs(by_name.history[-1] - by_module.history[-1]) < 1e-9


def test_regularise_total_false_leaves_the_starting_field_unpenalised():
    """With a similarity that is always 0 only the regulariser acts: on the total field it smooths a rough
    starting field; on the residual alone (regularise_total=False) the residual stays zero and init comes back."""

    class Nothing(torch.nn.Module):
        def forward(self, pred, target):
            return (pred * 0.0).sum()

    image = torch.rand(1, 1, 16, 16, 16)
    torch.manual_seed(0)
    init = torch.randn(1, 3, 16, 16, 16)
    kwargs = {"reg_weight": 1.0, "iterations": 20, "lr": 0.2, "progress": False}
    total = InstanceOptimiser(Nothing(), **kwargs)(image, image, init=init)
    residual = InstanceOptimiser(Nothing(), regularise_total=False, **kwargs)(image, image, init=init)
    assert float((total - init).abs().mean()) > 0.05
    assert torch.allclose(residual, init, atol=1e-6)


def test_final_sigma_smooths_the_returned_field_and_keeps_a_constant_one():
    from common.metrics import sdlogj

    class Nothing(torch.nn.Module):
        def forward(self, pred, target):
            return (pred * 0.0).sum()

    image = torch.rand(1, 1, 20, 20, 20)
    torch.manual_seed(0)
    rough = 0.3 * torch.randn(1, 3, 20, 20, 20)
    kwargs = {"reg_weight": 0.0, "iterations": 1, "lr": 1e-6, "progress": False}
    plain = InstanceOptimiser(Nothing(), **kwargs)(image, image, init=rough)
    smooth = InstanceOptimiser(Nothing(), final_sigma=1.0, **kwargs)(image, image, init=rough)
    assert smooth.shape == plain.shape
    assert sdlogj(smooth[0].numpy()) < 0.5 * sdlogj(plain[0].numpy())
    shift = torch.ones(1, 3, 20, 20, 20) * torch.tensor([1.5, -2.0, 0.5]).view(1, 3, 1, 1, 1)
    kept = InstanceOptimiser(Nothing(), final_sigma=1.5, **kwargs)(image, image, init=shift)
    assert torch.allclose(kept, shift, atol=1e-5)  # replicate padding: a constant field is unchanged at the border
    with pytest.raises(ValueError, match="final_sigma"):
        InstanceOptimiser(final_sigma=-1)


def test_deterministic_with_a_seed():
    fixed = _blob3d((24, 24, 24), (12.0, 12.0, 12.0))
    moving = _blob3d((24, 24, 24), (13.0, 11.0, 12.5))
    runs = [
        InstanceOptimiser("mind", samples=2048, iterations=[10, 10], levels=[2, 1], seed=s, progress=False)(
            moving, fixed
        )
        for s in (3, 3, 4)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_cube_lncc_is_seeded_and_its_gradient_follows_the_dense_one():
    """Cubes: same seed, same field; the sampled loss's gradient points where the dense LNCC's does."""
    fixed = _blob3d((32, 32, 32), (16.0, 16.0, 16.0))
    moving = _blob3d((32, 32, 32), tuple((16.0 + SHIFT).tolist()))
    kw = {"image_loss": "lncc", "ncc_kernel": 5, "patch_size": 12, "samples": 8 * 12**3, "iterations": 5,
          "levels": [1], "grid_factor": 1, "progress": False}  # fmt: skip
    runs = [InstanceOptimiser(seed=s, **kw)(moving, fixed) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    opt, dense = InstanceOptimiser(**kw), InstanceOptimiser(**{**kw, "samples": 0})
    from common.engines.io_sampling import cube_lncc, foreground_indices

    grads = []
    for sampled in (True, False):
        params = torch.zeros(1, 3, 32, 32, 32, requires_grad=True)
        if sampled:
            gen = torch.Generator().manual_seed(0)
            fg = foreground_indices(moving, fixed)
            loss = sum(cube_lncc(opt, params, (32,) * 3, None, moving, fixed, fg, gen, 64 * 12**3, 5) for _ in range(4))
        else:
            loss = dense._dense_similarity(params, (32,) * 3, None, moving, fixed, "lncc", dense.similarities[0])
        loss.backward()
        grads.append(params.grad[0, :, 12:20, 12:20, 12:20].mean(dim=(1, 2, 3)))
    # both pull towards the shift (fixed(x) = moving(x + SHIFT): the loss falls as the field grows along SHIFT)
    for g in grads:
        assert (torch.sign(-g) == torch.sign(SHIFT)).all(), g
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.9


def test_diffeomorphic_large_shift_does_not_fold():
    from common.blocks import jacobian_determinant, warp

    fixed = _blob3d((32, 32, 32), (16.0, 16.0, 16.0), width=30.0)
    moving = _blob3d((32, 32, 32), (20.0, 13.0, 16.0), width=30.0)
    opt = InstanceOptimiser("ssd", reg_weight=0.01, iterations=[80, 40], levels=[2, 1], lr=0.5, diffeomorphic=True,
                            progress=False)  # fmt: skip
    ddf = opt(moving, fixed)
    # interior (2 voxels cropped, as the Learn2Reg scorers do; border-padded integration bends the last voxels)
    assert float(jacobian_determinant(ddf)[..., 2:-2, 2:-2, 2:-2].min()) > 0
    assert float((warp(moving, ddf) - fixed).abs().mean()) < float((moving - fixed).abs().mean()) / 3


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"levels": [1, 2]}, "coarse to fine"),
        ({"levels": [2, 1], "iterations": [5]}, "one per level"),
        ({"image_loss": "nmi"}, "unknown image_loss"),
        ({"regulariser": "tv"}, "unknown regulariser"),
        ({"lr": 0}, "lr must be > 0"),
        ({"samples": -1}, "samples an integer >= 0"),
        ({"levels": [2, 1], "samples": [0, 1, 2]}, "samples an integer >= 0 or one per level"),
        ({"ncc_kernel": 5, "patch_size": 5, "samples": 4096}, "patch_size must be an integer > ncc_kernel"),
        (
            {"levels": [2, 1], "ncc_kernel": [5, 9], "patch_size": 8, "samples": [0, 4096]},
            r"patch_size must be an integer > ncc_kernel \(9\)",
        ),
        ({"patch_size": 0}, "patch_size must be an integer"),
        ({"ncc_kernel": 4}, "ncc_kernel must be an odd integer >= 1"),
        ({"levels": [2, 1], "ncc_kernel": [5, 7, 9]}, "ncc_kernel must be an odd integer >= 1, or one per level"),
        ({"levels": [2, 1], "reg_weight": [1.0]}, "reg_weight must be >= 0, one number or one per level"),
        ({"reg_weight": -1.0}, "reg_weight must be >= 0"),
        ({"levels": [2, 1], "image_loss": ["lncc"]}, "image_loss must be one loss or one per level"),
        ({"grid_factor": 0}, "grid_factor must be an integer >= 1"),
        ({"levels": [2, 1], "grid_factor": [2, 2, 1]}, "grid_factor must be an integer >= 1 or one per level"),
        ({"fold_weight": -1.0}, "fold_weight must be >= 0"),
        ({"fold_weight": 1.0, "diffeomorphic": True}, "fold_weight .* 0 for diffeomorphic or B-spline"),
        ({"levels": [2, 1], "fold_weight": [0.0, 1.0], "bspline_stride": 4}, "fold_weight .* 0 for diffeomorphic"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=f"InstanceOptimiser: .*{message}"):
        InstanceOptimiser(**kwargs)


def test_patch_size_only_bounds_the_windows_of_levels_that_sample_cubes():
    """A wide window on a dense level needs no cube room; the same window on a sampled level does."""
    dense = InstanceOptimiser(levels=[2, 1], ncc_kernel=[5, 21], patch_size=16, samples=[4096, 0])
    assert dense.ncc_kernels == [5, 21] and dense.patch_size == 16
    with pytest.raises(ValueError, match=r"patch_size must be an integer > ncc_kernel \(21\)"):
        InstanceOptimiser(levels=[2, 1], ncc_kernel=[5, 21], patch_size=16, samples=[0, 4096])
    InstanceOptimiser(image_loss="mind", ncc_kernel=21, patch_size=16, samples=4096)  # MIND samples voxels, no cubes
    bspline = InstanceOptimiser(ncc_kernel=21, patch_size=16, samples=4096, bspline_stride=4)  # B-spline: no cubes
    assert bspline.bspline is not None and bspline.patch_size == 16


def test_grid_factor_per_level_equals_running_the_levels_one_after_the_other():
    """``grid_factor=[2, 1]``: a half-resolution residual on the coarse level, a voxel-wise one on the input grid;
    the same field as the coarse level alone followed by the fine level alone from its result."""
    fixed = _blob3d((24, 24, 24), (12.0, 12.0, 12.0))
    moving = _blob3d((24, 24, 24), tuple((12.0 + SHIFT).tolist()))
    kw = {"image_loss": "lncc", "ncc_kernel": 5, "lr": 0.3, "smoothing": 1, "progress": False}
    both = InstanceOptimiser(levels=[2, 1], iterations=[6, 4], grid_factor=[2, 1], reg_weight=[1.0, 2.0], **kw)
    shapes = []
    both_field = both(moving, fixed)
    coarse = InstanceOptimiser(levels=[2], iterations=[6], grid_factor=2, reg_weight=1.0, **kw)(moving, fixed)
    fine_opt = InstanceOptimiser(levels=[1], iterations=[4], grid_factor=1, reg_weight=2.0, **kw)
    original = fine_opt._param_shape
    fine_opt._param_shape = lambda size, level: shapes.append(original(size, level)) or original(size, level)
    fine = fine_opt(moving, fixed, init=coarse)
    assert shapes == [(24, 24, 24)]  # voxel-wise on the input grid
    assert torch.allclose(both_field, fine, atol=1e-6)
    coarse_only = InstanceOptimiser(levels=[2, 1], iterations=[6, 4], grid_factor=2, reg_weight=[1.0, 2.0], **kw)
    assert not torch.allclose(coarse_only(moving, fixed), both_field, atol=1e-4)


def test_ncc_kernel_per_level_equals_running_the_levels_one_after_the_other():
    """``ncc_kernel=[5, 7]``: window 5 on the coarse level, 7 on the input grid (the 0.3.5 brain default's pattern)."""
    fixed = _blob3d((24, 24, 24), (12.0, 12.0, 12.0))
    moving = _blob3d((24, 24, 24), tuple((12.0 + SHIFT).tolist()))
    kw = {"image_loss": "lncc", "lr": 0.3, "smoothing": 1, "progress": False, "grid_factor": 1}
    both = InstanceOptimiser(levels=[2, 1], iterations=[6, 4], ncc_kernel=[5, 7], **kw)
    assert both.ncc_kernels == [5, 7]
    coarse = InstanceOptimiser(levels=[2], iterations=[6], ncc_kernel=5, **kw)(moving, fixed)
    fine = InstanceOptimiser(levels=[1], iterations=[4], ncc_kernel=7, **kw)(moving, fixed, init=coarse)
    assert torch.allclose(both(moving, fixed), fine, atol=1e-6)
    same = InstanceOptimiser(levels=[2, 1], iterations=[6, 4], ncc_kernel=5, **kw)(moving, fixed)
    assert not torch.allclose(same, fine, atol=1e-4)  # the window does reach the input-grid level


def test_ncc_kernel_per_level_reaches_the_random_cube_path(monkeypatch):
    """With ``samples > 0`` LNCC is scored on random cubes (io_sampling.cube_lncc): each level uses its own window."""
    import common.engines.io_sampling as io_sampling

    used = []
    original = io_sampling.valid_lncc_map
    monkeypatch.setattr(io_sampling, "valid_lncc_map", lambda a, b, k: used.append(k) or original(a, b, k))
    fixed = _blob3d((24, 24, 24), (12.0, 12.0, 12.0))
    moving = _blob3d((24, 24, 24), tuple((12.0 + SHIFT).tolist()))
    opt = InstanceOptimiser("lncc", levels=[2, 1], iterations=[3, 2], ncc_kernel=[5, 7], samples=[1000, 2 * 12**3],
                            patch_size=12, lr=0.3, progress=False)  # fmt: skip
    opt(moving, fixed)
    assert used == [5, 5, 5, 7, 7]


def test_bad_init_shape():
    with pytest.raises(ValueError, match=r"init must be a displacement \(1, 3, \*S\)"):
        InstanceOptimiser(iterations=1, progress=False)(
            torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8), init=torch.zeros(1, 2, 8, 8, 8)
        )


def test_fit_affine_keeps_the_best_parameters():
    target = torch.tensor([1.0, -2.0])
    best, history = InstanceOptimiser.fit_affine(lambda p: ((p - target) ** 2).sum(), torch.zeros(2), 200, 0.05)
    assert torch.allclose(best, target, atol=0.05)
    assert len(history) == 201 and history[0] == pytest.approx(5.0)
    assert float(((best - target) ** 2).sum()) == pytest.approx(min(history))
    start = target + 0.01
    wild, wild_history = InstanceOptimiser.fit_affine(lambda p: ((p - target) ** 2).sum(), start, 5, 10.0)
    assert torch.equal(wild, start)  # every step overshoots: the start is kept
    assert all(v > wild_history[0] for v in wild_history[1:])


def test_fold_weight_removes_the_folds_a_weak_regulariser_lets_through():
    from common.blocks import warp
    from common.losses import FoldingPenalty

    shape = (24, 24, 24)
    fixed = _blob3d(shape, (12.0, 12.0, 12.0), width=30.0) + 0.5 * _blob3d(shape, (6.0, 16.0, 10.0), width=8.0)
    moving = _blob3d(shape, (15.0, 10.0, 12.0), width=20.0) + 0.5 * _blob3d(shape, (8.0, 13.0, 13.0), width=8.0)
    folded, errors = [], []
    for fold_weight in (0.0, 10.0):
        opt = InstanceOptimiser("lncc", reg_weight=0.05, iterations=60, lr=0.3, grid_factor=1, smoothing=2,
                                ncc_kernel=5, progress=False, fold_weight=fold_weight)  # fmt: skip
        ddf = opt(moving, fixed)
        folded.append(int((FoldingPenalty(margin=0.0, reduction="none")(ddf) > 0).sum()))
        errors.append(float((warp(moving, ddf) - fixed).abs().mean()))
    assert folded[0] > 5 and folded[1] == 0, folded
    assert errors[1] < 1.1 * errors[0] and errors[1] < 0.5 * float((moving - fixed).abs().mean()), errors
