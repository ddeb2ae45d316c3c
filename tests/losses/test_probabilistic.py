"""The Dalca et al. prior KL and posterior smoothing against dense linear algebra on small grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.losses.probabilistic import (
    GaussianSmoothing,
    PriorKLLoss,
    laplacian_quadratic,
    laplacian_trace_weights,
    sample_velocity,
)


def _dense_smoothing(shape, sigma):
    n = int(np.prod(shape))
    sm = GaussianSmoothing(sigma, dims=len(shape))
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape)
    return sm(eye).reshape(n, n).T.numpy()  # column i = C e_i


def _dense_laplacian(shape):
    n = int(np.prod(shape))
    idx = np.arange(n).reshape(shape)
    rows = []
    for axis in range(len(shape)):
        a = np.moveaxis(idx, axis, 0)
        for p, q in zip(a[:-1].ravel(), a[1:].ravel()):
            r = np.zeros(n)
            r[p], r[q] = -1.0, 1.0
            rows.append(r)
    d = np.array(rows)
    return d.T @ d


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 3)])
@pytest.mark.parametrize("sigma", [0.0, 0.8, 1.5])
def test_trace_weights_are_exact_including_borders(shape, sigma):
    c = _dense_smoothing(shape, sigma)
    lap = _dense_laplacian(shape)
    s = np.random.default_rng(0).uniform(0.1, 2.0, int(np.prod(shape)))
    dense = np.trace(lap @ c @ np.diag(s) @ c.T)
    kappa = laplacian_trace_weights(shape, GaussianSmoothing(sigma, len(shape)) if sigma else None)
    assert kappa.shape == (1, 1, *shape)
    assert float((kappa.flatten().numpy() * s).sum()) == pytest.approx(dense, rel=1e-10)


def test_diagonal_weights_are_the_voxel_degree():
    kappa = laplacian_trace_weights((4, 5, 6))[0, 0]
    assert kappa[1:-1, 1:-1, 1:-1].unique().tolist() == [6.0]
    assert kappa[0, 0, 0] == 3.0 and kappa[0, 2, 3] == 5.0


def test_quadratic_term_matches_dense_laplacian():
    shape = (5, 6)
    mu = torch.randn(2, 2, *shape, dtype=torch.float64)
    lap = _dense_laplacian(shape)
    q = laplacian_quadratic(mu)
    for b in range(2):
        for ch in range(2):
            v = mu[b, ch].flatten().numpy()
            assert float(q[b, ch]) == pytest.approx(v @ lap @ v, rel=1e-10)


def test_kl_matches_the_dense_gaussian_formula_up_to_a_constant():
    """KL differences between two posteriors equal those of 1/2[tr(lam L S) + lam mu'L mu - log|S|] (dense)."""
    shape, sigma, lam = (5, 6), 1.0, 3.0
    c, lap = _dense_smoothing(shape, sigma), _dense_laplacian(shape)
    n = int(np.prod(shape))
    loss = PriorKLLoss(lam, GaussianSmoothing(sigma, 2))
    rng = np.random.default_rng(1)

    def dense(mu, logvar):
        s = c @ np.diag(np.exp(logvar)) @ c.T
        return 0.5 * (lam * np.trace(lap @ s) + lam * mu @ lap @ mu - np.linalg.slogdet(s)[1])

    vals = []
    for _ in range(2):
        mu, lv = rng.normal(0, 1, n), rng.normal(-2, 0.5, n)
        t = lambda a: torch.as_tensor(a).reshape(1, 1, *shape)  # noqa: E731
        vals.append((dense(mu, lv), float(loss(t(mu), t(lv))) * n))
    assert vals[0][1] - vals[1][1] == pytest.approx(vals[0][0] - vals[1][0], rel=1e-8)


def test_kl_prefers_smooth_means_and_the_prior_variance():
    loss = PriorKLLoss(10.0)
    smooth = torch.linspace(0, 1, 16).reshape(1, 1, 16, 1).expand(1, 2, 16, 16).contiguous()
    rough = smooth + 0.3 * torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    lv = torch.full_like(smooth, -3.0)
    assert loss(smooth, lv) < loss(rough, lv)
    # d KL / d sigma^2 = 0 at sigma^2 = 1 / (lam * kappa): the optimum variance inside the grid is 1 / (10 * 4)
    best = torch.log(torch.tensor(1 / 40.0))
    vals = [float(loss(smooth, torch.full_like(smooth, float(best) + d))) for d in (-0.5, 0.0, 0.5)]
    assert vals[1] < vals[0] and vals[1] < vals[2]


def test_smoothed_samples_have_the_smoothed_covariance():
    shape, sigma = (6, 6), 1.0
    c = _dense_smoothing(shape, sigma)
    mu = torch.zeros(4000, 1, *shape, dtype=torch.float64)
    lv = torch.zeros_like(mu)
    z = sample_velocity(mu, lv, GaussianSmoothing(sigma, 2), generator=torch.Generator().manual_seed(0))
    emp = np.cov(z.reshape(4000, -1).numpy().T)
    assert np.abs(emp - c @ c.T).max() < 0.02
    with pytest.raises(ValueError, match="PriorKLLoss"):
        PriorKLLoss(1.0)(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5))
