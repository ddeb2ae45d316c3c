"""Image-guided bilateral filter of displacement fields (common.blocks.bilateral)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.autograd import gradcheck

from common.blocks import BilateralFieldFilter, bilateral_filter_field

SHAPES = {2: (9, 8), 3: (7, 6, 5)}
HUGE = 1e6  # sigma_intensity so large that the range term is exp(-tiny) == 1 in float64


def _numpy_reference(
    ddf: np.ndarray, guide: np.ndarray, kernel_size: int, sigma_s: float, sigma_i: float, dilation: int = 1
) -> np.ndarray:
    """Voxel-by-voxel joint bilateral filter in numpy (edge padding), written independently of the module."""
    dims = ddf.ndim - 2
    r = kernel_size // 2
    out = np.empty_like(ddf)
    for b in range(ddf.shape[0]):
        for x in np.ndindex(*ddf.shape[2:]):
            num, den = np.zeros(ddf.shape[1]), 0.0
            for o in itertools.product(range(-r, r + 1), repeat=dims):
                y = tuple(min(max(xi + oi * dilation, 0), n - 1) for xi, oi, n in zip(x, o, ddf.shape[2:]))
                spatial = sum((oi * dilation) ** 2 for oi in o)
                rng = np.sum((guide[(b, slice(None), *y)] - guide[(b, slice(None), *x)]) ** 2)
                w = np.exp(-spatial / (2 * sigma_s**2)) * np.exp(-rng / (2 * sigma_i**2))
                num += w * ddf[(b, slice(None), *y)]
                den += w
            out[(b, slice(None), *x)] = num / den
    return out


def _gaussian_kernel(dims: int, kernel_size: int, sigma: float, dilation: int) -> np.ndarray:
    """Normalised Gaussian correlation kernel with ``dilation - 1`` zeros between taps."""
    r = kernel_size // 2
    width = 2 * r * dilation + 1
    kernel = np.zeros((width,) * dims)
    for o in itertools.product(range(-r, r + 1), repeat=dims):
        kernel[tuple(r * dilation + oi * dilation for oi in o)] = np.exp(
            -sum((oi * dilation) ** 2 for oi in o) / (2 * sigma**2)
        )
    return kernel / kernel.sum()


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (5, 1), (3, 2)])
def test_constant_field_unchanged(dims, kernel_size, dilation):
    shape = SHAPES[dims]
    value = torch.tensor([1.5, -2.25, 0.75][:dims]).view(1, dims, *([1] * dims))
    ddf = value.expand(2, dims, *shape).contiguous()
    guide = torch.rand(2, 2, *shape) * 10  # arbitrary multi-channel guide
    out = bilateral_filter_field(ddf, guide, kernel_size, sigma_spatial=1.3, sigma_intensity=0.2, dilation=dilation)
    assert out.shape == ddf.shape
    torch.testing.assert_close(out, ddf, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("kernel_size,sigma,dilation", [(3, 0.8, 1), (5, 1.5, 1), (3, 1.0, 2)])
def test_huge_sigma_intensity_is_normalised_gaussian(dims, kernel_size, sigma, dilation):
    shape = SHAPES[dims]
    ddf = torch.randn(1, dims, *shape, dtype=torch.float64)
    guide = torch.rand(1, 1, *shape, dtype=torch.float64)
    out = bilateral_filter_field(ddf, guide, kernel_size, sigma_spatial=sigma, sigma_intensity=HUGE, dilation=dilation)
    kernel = _gaussian_kernel(dims, kernel_size, sigma, dilation)
    expected = np.stack([ndimage.correlate(ddf[0, k].numpy(), kernel, mode="nearest") for k in range(dims)])[None]
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("kernel_size,sigma_s,sigma_i,dilation", [(3, 1.0, 0.3, 1), (5, 0.7, 0.1, 1), (3, 2.0, 0.5, 2)])
def test_matches_voxelwise_reference(dims, kernel_size, sigma_s, sigma_i, dilation):
    shape = (6, 5) if dims == 2 else (4, 5, 3)
    ddf = torch.randn(2, dims, *shape, dtype=torch.float64)
    guide = torch.rand(2, 2, *shape, dtype=torch.float64)
    out = bilateral_filter_field(ddf, guide, kernel_size, sigma_s, sigma_i, dilation=dilation)
    expected = _numpy_reference(ddf.numpy(), guide.numpy(), kernel_size, sigma_s, sigma_i, dilation)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)
    assert out.abs().max() <= ddf.abs().max()  # convex combination of the input vectors


@pytest.mark.parametrize("dims", [2, 3])
def test_kernel_size_one_is_identity(dims):
    ddf = torch.randn(1, dims, *SHAPES[dims])
    out = bilateral_filter_field(ddf, torch.rand(1, 1, *SHAPES[dims]), kernel_size=1)
    torch.testing.assert_close(out, ddf, atol=0, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_edge_preservation(dims):
    shape = (8,) * dims
    half = shape[-1] // 2
    guide = torch.zeros(1, 1, *shape)
    guide[..., half:] = 1.0  # step along the last axis
    ddf = torch.zeros(1, dims, *shape)
    ddf[:, -1, ..., :half] = 1.0  # component along the step axis: +1 left, -1 right
    ddf[:, -1, ..., half:] = -1.0
    sharp = bilateral_filter_field(ddf, guide, 5, sigma_spatial=1.0, sigma_intensity=0.05)
    assert (sharp - ddf).abs().max() < 1e-3
    blurred = bilateral_filter_field(ddf, guide, 5, sigma_spatial=1.0, sigma_intensity=HUGE)
    change = (blurred - ddf)[:, -1].abs()
    assert change[..., half - 1].min() > 0.1 and change[..., half].min() > 0.1
    assert change[..., 0].max() < 1e-6  # far from the edge a piecewise-constant field is untouched


@pytest.mark.parametrize("dims", [2, 3])
def test_noise_reduction_in_homogeneous_region(dims):
    shape = (24, 24) if dims == 2 else (12, 12, 12)
    g = torch.Generator().manual_seed(3)
    guide = 0.5 + 0.005 * torch.randn(1, 1, *shape, generator=g)  # homogeneous tissue, mild noise
    ddf = 2.0 + torch.randn(1, dims, *shape, generator=g)
    out = bilateral_filter_field(ddf, guide, 5, sigma_spatial=1.5, sigma_intensity=0.1)
    inner = (slice(None), slice(None)) + (slice(2, -2),) * dims
    ratio = ddf[inner].std() / out[inner].std()
    assert ratio > 2.0, f"noise std only reduced by {ratio:.2f}x"
    assert abs(out.mean().item() - ddf.mean().item()) < 0.05


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "dims,channels,per_batch_sigma,kernel_size,dilation",
    [(2, 1, False, 3, 1), (2, 2, True, 5, 1), (3, 1, False, 3, 1), (3, 2, True, 3, 2)],
)
def test_gradcheck(dims, channels, per_batch_sigma, kernel_size, dilation):
    shape = (5, 4) if dims == 2 else (4, 3, 3)
    f64 = torch.float64
    ddf = torch.randn(2, dims, *shape, dtype=f64, requires_grad=True)
    guide = torch.rand(2, channels, *shape, dtype=f64, requires_grad=True)
    n = 2 if per_batch_sigma else 1
    ss = torch.full((n,), 1.2, dtype=f64).add(torch.rand(n, dtype=f64) * 0.3).requires_grad_()
    si = torch.full((n,), 0.4, dtype=f64).add(torch.rand(n, dtype=f64) * 0.3).requires_grad_()

    def fn(d, g, a, b):
        return bilateral_filter_field(d, g, kernel_size, a, b, dilation=dilation)

    assert gradcheck(fn, (ddf, guide, ss, si), eps=1e-6, atol=1e-6)


def test_partial_gradients_match_full():
    ddf = torch.randn(1, 3, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    guide = torch.rand(1, 1, 5, 4, 4, dtype=torch.float64)
    weight = torch.randn(1, 3, 5, 4, 4, dtype=torch.float64)
    (only_ddf,) = torch.autograd.grad((bilateral_filter_field(ddf, guide, 3, 1.0, 0.3) * weight).sum(), ddf)
    guide.requires_grad_()
    full, _ = torch.autograd.grad((bilateral_filter_field(ddf, guide, 3, 1.0, 0.3) * weight).sum(), (ddf, guide))
    torch.testing.assert_close(only_ddf, full)


# ---------------------------------------------------------------- module
@pytest.mark.parametrize("dims", [2, 3])
def test_module_learnable_sigmas_get_gradients(dims):
    shape = SHAPES[dims]
    module = BilateralFieldFilter(spatial_dims=dims, kernel_size=3, sigma_spatial=1.0, sigma_intensity=0.3)
    names = {name for name, _ in module.named_parameters()}
    assert names == {"log_sigma_spatial", "log_sigma_intensity"}
    ddf, guide = torch.randn(2, dims, *shape), torch.rand(2, 1, *shape)
    out = module(ddf, guide)
    torch.testing.assert_close(out, bilateral_filter_field(ddf, guide, 3, 1.0, 0.3))
    (out * torch.randn_like(out)).sum().backward()
    for p in module.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs() > 0


def test_module_not_learnable_has_no_parameters():
    module = BilateralFieldFilter(
        spatial_dims=2, kernel_size=3, sigma_spatial=2.0, sigma_intensity=0.5, learnable=False
    )
    assert list(module.parameters()) == []
    assert set(dict(module.named_buffers())) == {"log_sigma_spatial", "log_sigma_intensity"}
    assert module.sigma_spatial.item() == pytest.approx(2.0) and module.sigma_intensity.item() == pytest.approx(0.5)
    ddf = torch.randn(1, 2, 6, 6, requires_grad=True)
    module(ddf, torch.rand(1, 1, 6, 6)).sum().backward()
    assert ddf.grad is not None


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "ddf_shape,guide_shape,kwargs,match",
    [
        ((1, 3, 6, 6), (1, 1, 6, 6), {}, r"bilateral_filter_field: `ddf` has 3 channels .*\(1, 3, 6, 6\)"),
        ((1, 2, 6), (1, 1, 6), {}, r"bilateral_filter_field: `ddf` must have shape .*\(1, 2, 6\)"),
        ((1, 2, 6, 6), (1, 1, 6, 5), {}, r"bilateral_filter_field: `guide` .*\(1, 2, 6, 6\).*\(1, 1, 6, 5\)"),
        ((2, 2, 6, 6), (1, 1, 6, 6), {}, r"bilateral_filter_field: `guide` .*\(2, 2, 6, 6\).*\(1, 1, 6, 6\)"),
        ((1, 3, 4, 4, 4), (1, 1, 4, 4), {}, r"bilateral_filter_field: `guide` .*\(1, 1, 4, 4\)"),
        ((1, 2, 6, 6), (1, 1, 6, 6), {"kernel_size": 4}, r"bilateral_filter_field: `kernel_size` .*odd.*got 4"),
        ((1, 2, 6, 6), (1, 1, 6, 6), {"kernel_size": 0}, r"bilateral_filter_field: `kernel_size` .*got 0"),
        ((1, 2, 6, 6), (1, 1, 6, 6), {"sigma_spatial": 0.0}, r"bilateral_filter_field: `sigma_spatial` .*positive"),
        (
            (1, 2, 6, 6),
            (1, 1, 6, 6),
            {"sigma_intensity": -0.1},
            r"bilateral_filter_field: `sigma_intensity` .*positive",
        ),
        (
            (1, 2, 6, 6),
            (1, 1, 6, 6),
            {"sigma_intensity": torch.tensor([0.1, 0.2, 0.3])},
            r"bilateral_filter_field: `sigma_intensity` .*got shape \(3,\)",
        ),
        ((1, 2, 6, 6), (1, 1, 6, 6), {"dilation": 0}, r"bilateral_filter_field: `dilation` .*got 0"),
    ],
)
def test_errors(ddf_shape, guide_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bilateral_filter_field(torch.zeros(ddf_shape), torch.zeros(guide_shape), **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"spatial_dims": 4}, r"BilateralFieldFilter: `spatial_dims` must be 2 or 3, got 4"),
        ({"kernel_size": 2}, r"BilateralFieldFilter: `kernel_size` .*got 2"),
        ({"sigma_intensity": 0.0}, r"BilateralFieldFilter: `sigma_intensity` .*positive"),
    ],
)
def test_module_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BilateralFieldFilter(**kwargs)


def test_module_rejects_other_dimension():
    with pytest.raises(ValueError, match=r"BilateralFieldFilter: built for 3D fields, got ddf shape \(1, 2, 5, 5\)"):
        BilateralFieldFilter(spatial_dims=3)(torch.zeros(1, 2, 5, 5), torch.zeros(1, 1, 5, 5))
