"""MIND-SSC: the descriptor against a direct loop implementation of its definition, gradients, behaviour."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from common.losses import MINDSSCLoss, mind_ssc
from common.losses.mind import ssc_pairs


def _direct_mind(img: np.ndarray, radius: int, dilation: int) -> np.ndarray:
    """The module docstring's definition, voxel by voxel (clipped indices = replicate padding)."""
    dims = img.ndim
    shape = img.shape
    pairs = ssc_pairs(dims)

    def at(pos):
        return img[tuple(int(np.clip(p, 0, n - 1)) for p, n in zip(pos, shape))]

    def sqdiff(y, a, b):
        return (
            at([yi + dilation * ai for yi, ai in zip(y, a)]) - at([yi + dilation * bi for yi, bi in zip(y, b)])
        ) ** 2

    dist = np.zeros((len(pairs), *shape))
    offsets = list(itertools.product(range(-radius, radius + 1), repeat=dims))
    for x in itertools.product(*[range(n) for n in shape]):
        for k, (a, b) in enumerate(pairs):
            total = 0.0
            for p in offsets:
                y = [int(np.clip(xi + pi, 0, n - 1)) for xi, pi, n in zip(x, p, shape)]
                total += sqdiff(y, a, b)
            dist[(k, *x)] = total / len(offsets)
    var = dist.mean(0)
    level = var.mean()
    var = np.clip(var, level * 1e-3, level * 1e3)
    desc = np.exp(-dist / var)
    return desc / desc.max(0, keepdims=True)


def test_pairs_are_the_ssc_neighbourhood():
    pairs3 = ssc_pairs(3)
    assert len(pairs3) == 12 and len(ssc_pairs(2)) == 4
    for a, b in pairs3:
        d = np.subtract(a, b)
        assert (d**2).sum() == 2  # neighbours at distance sqrt(2), i.e. on different axes
    assert len({frozenset(p) for p in pairs3}) == 12


@pytest.mark.parametrize("shape,radius,dilation", [((5, 6, 7), 1, 2), ((6, 5, 4), 0, 1), ((9, 8), 1, 2)])
def test_matches_direct_definition(shape, radius, dilation):
    rng = np.random.default_rng(0)
    img = rng.random(shape)
    got = mind_ssc(torch.as_tensor(img)[None, None], radius, dilation)[0].numpy()
    want = _direct_mind(img, radius, dilation)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.allclose(got.max(0), 1.0) and got.min() > 0


def test_gradcheck_float64():
    torch.manual_seed(0)
    a = torch.rand(1, 1, 5, 5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.rand(1, 1, 5, 5, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: MINDSSCLoss(radius=1, dilation=1)(x, b), (a,))


def test_contrast_invariance_and_misalignment():
    """Same structure under another intensity scale: ~0; a shifted copy: larger, growing with the shift."""
    g = torch.linspace(-1, 1, 24)
    z, y, x = torch.meshgrid(g, g, g, indexing="ij")
    img = (torch.sin(4 * x) * torch.cos(3 * y) + z)[None, None]
    loss = MINDSSCLoss()
    assert float(loss(img, 3.0 * img + 2.0)) < 1e-6
    shifted = [float(loss(torch.roll(img, s, dims=2), img)) for s in (1, 2, 3)]
    assert shifted[0] > 1e-3 and shifted[0] < shifted[1] < shifted[2]


def test_errors_name_the_callable():
    with pytest.raises(ValueError, match=r"mind_ssc: expected an image \(B, 1, \*S\)"):
        mind_ssc(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="MINDSSCLoss: radius"):
        MINDSSCLoss(radius=-1)
    with pytest.raises(ValueError, match="MINDSSCLoss"):
        MINDSSCLoss()(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 9))


def test_autograd_and_inplace_paths_agree():
    img = torch.rand(1, 1, 9, 8, 7, dtype=torch.float64)
    plain = mind_ssc(img)
    tracked = mind_ssc(img.clone().requires_grad_(True))
    assert tracked.requires_grad
    torch.testing.assert_close(plain, tracked.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(1, 2, 7, 5, 6), (2, 3, 6, 9), (1, 1, 1, 4, 3)])
@pytest.mark.parametrize("radius", [1, 2])
def test_box_mean_gradient_is_the_adjoint_of_the_filter(shape, radius):
    """box_mean's own backward (in place) equals autograd through the plain replicate-pad + shifted-sum filter."""
    import torch.nn.functional as F
    from torch.autograd import gradcheck

    from common.losses.mind import box_mean

    def plain(x):
        dims, width = x.ndim - 2, 2 * radius + 1
        x = F.pad(x, [radius] * (2 * dims), mode="replicate")
        for axis in range(2, x.ndim):
            n = x.shape[axis] - 2 * radius
            x = sum(x.narrow(axis, k, n) for k in range(width))
        return x / width**dims

    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(*shape, dtype=torch.float64)
    assert torch.allclose(box_mean(x, radius), plain(x), rtol=0, atol=1e-14)
    (mine,) = torch.autograd.grad((box_mean(x, radius) * weights).sum(), x)
    (ref,) = torch.autograd.grad((plain(x) * weights).sum(), x)
    assert torch.allclose(mine, ref, rtol=0, atol=1e-13)
    assert gradcheck(lambda t: box_mean(t, radius), (x,), fast_mode=True)
