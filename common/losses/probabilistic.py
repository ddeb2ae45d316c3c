"""Probabilistic diffeomorphic registration (Dalca et al. 2018): posterior smoothing, sampling and the KL term.

The network predicts a Gaussian posterior ``q(z) = N(mu, Sigma)`` over a stationary velocity field ``z``
(voxels, one independent Gaussian per component). Two posterior families:

* diagonal: ``Sigma = diag(sigma^2)`` (Dalca et al. MICCAI 2018);
* smoothed: ``Sigma = C diag(sigma^2) C^T`` with ``C`` a fixed Gaussian smoothing (a convolution, zero padding);
  a sample is ``z = mu + C (sigma * r)``, ``r ~ N(0, I)`` (the reparameterisation of the 2018 Med-NeurIPS paper).

The prior is ``p(z) = N(0, (lambda L)^-1)`` with ``L = D^T D`` the graph Laplacian of the voxel grid (``D``: the
forward differences along each axis, one row per grid edge; no wrap-around). Then, per component,

    KL[q || p] = 1/2 [ lambda tr(L Sigma) + lambda mu^T L mu - log|Sigma| ] + const

with ``mu^T L mu = sum over edges (mu_a - mu_b)^2`` and ``log|Sigma| = sum log sigma^2 + 2 log|det C|``.
The trace is exact here: ``tr(L C S C^T) = sum_i kappa_i sigma_i^2`` with ``kappa_i = ||D C e_i||^2``, computed
for every voxel (borders included) by :func:`laplacian_trace_weights`; for ``C = I`` it is the voxel degree
(``2 * dims`` inside the grid). The dropped constant (``-1/2 log|lambda L|`` of an improper prior, the
dimension, ``2 log|det C|``) does not depend on the network. :class:`PriorKLLoss` returns this KL divided by the
number of field entries (a per-voxel mean, like the image terms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "gaussian_kernel_1d",
    "GaussianSmoothing",
    "laplacian_trace_weights",
    "laplacian_quadratic",
    "PriorKLLoss",
    "sample_velocity",
]


def gaussian_kernel_1d(sigma: float, truncate: float = 3.0, radius: int | None = None) -> torch.Tensor:
    """Normalised 1D Gaussian (float64), radius ``ceil(truncate * sigma)`` or the given ``radius`` (``2 radius + 1``
    taps); ``sigma = 0`` gives ``[1]``."""
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"gaussian_kernel_1d: sigma must be finite and >= 0, got {sigma}.")
    if sigma == 0:
        return torch.ones(1, dtype=torch.float64)
    r = max(1, int(math.ceil(truncate * sigma))) if radius is None else int(radius)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _conv_axis(x: torch.Tensor, k: torch.Tensor, axis: int, dims: int, pad_lo: int, pad_hi: int) -> torch.Tensor:
    """Correlate each channel of ``x (B, C, *S)`` with 1D ``k`` along spatial ``axis`` (zero padding)."""
    c = x.shape[1]
    shape = [1] * dims
    shape[axis] = k.numel()
    w = k.to(x.dtype).reshape(1, 1, *shape).repeat(c, 1, *([1] * dims))
    pad = [0, 0] * dims
    pad[2 * (dims - 1 - axis)] = pad_lo
    pad[2 * (dims - 1 - axis) + 1] = pad_hi
    conv = (F.conv2d, F.conv3d)[dims - 2]
    return conv(F.pad(x, pad), w, groups=c)


class GaussianSmoothing(nn.Module):
    """The fixed posterior smoothing ``C``: separable Gaussian convolution (zero padding, same size), 2D or 3D.

    Args:
        sigma: standard deviation in voxels (``0``: identity, the diagonal posterior).
        dims: 2 or 3.
    """

    def __init__(self, sigma: float, dims: int = 3, truncate: float = 3.0) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"GaussianSmoothing: dims must be 2 or 3, got {dims}.")
        self.sigma, self.dims = float(sigma), int(dims)
        self.register_buffer("kernel", gaussian_kernel_1d(self.sigma, truncate), persistent=False)

    @property
    def radius(self) -> int:
        return (self.kernel.numel() - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2:
            raise ValueError(
                f"GaussianSmoothing: expected (B, C, *S) with {self.dims} spatial dims, got {tuple(x.shape)}."
            )
        if self.kernel.numel() == 1:
            return x
        r = self.radius
        for axis in range(self.dims):
            x = _conv_axis(x, self.kernel, axis, self.dims, r, r)
        return x


def laplacian_trace_weights(shape: Sequence[int], smoothing: GaussianSmoothing | None = None) -> torch.Tensor:
    """``kappa_i = ||D C e_i||^2`` for every voxel of ``shape``, so ``tr(L C diag(s) C^T) = sum_i kappa_i s_i``.

    ``C e_i`` is the (border-truncated) kernel centred at ``i``; ``D`` its differences over the grid edges. Per axis
    ``a``: ``sum over edges along a of g_a(p - i)^2`` with ``g_a`` the kernel differenced along ``a`` - a
    correlation of the edge indicator with ``g_a^2``. Returns ``(1, 1, *shape)`` float64.
    """
    dims = len(shape)
    k = smoothing.kernel.double().cpu() if smoothing is not None else torch.ones(1, dtype=torch.float64)
    r = (k.numel() - 1) // 2
    kp = torch.cat([torch.zeros(1, dtype=torch.float64), k, torch.zeros(1, dtype=torch.float64)])
    d = kp[1:] - kp[:-1]  # d[j] = k(o + 1) - k(o) for offsets o = j - r - 1, j = 0 .. 2r + 1
    out = torch.zeros((1, 1, *shape), dtype=torch.float64)
    for axis in range(dims):
        edges = torch.zeros((1, 1, *shape), dtype=torch.float64)
        idx = [slice(None), slice(None)] + [slice(None)] * dims
        idx[2 + axis] = slice(0, shape[axis] - 1)
        edges[tuple(idx)] = 1.0
        # g_a^2 along `axis` (offsets -r-1..r), times k^2 along every other axis
        term = _conv_axis(edges, d**2, axis, dims, r + 1, r)
        for other in range(dims):
            if other != axis and k.numel() > 1:
                term = _conv_axis(term, k**2, other, dims, r, r)
        out = out + term
    return out


def laplacian_quadratic(mu: torch.Tensor) -> torch.Tensor:
    """``mu^T L mu`` per sample and channel: the sum of squared forward differences over all grid edges, ``(B, C)``."""
    dims = mu.dim() - 2
    total = mu.new_zeros(mu.shape[:2])
    for axis in range(dims):
        diff = torch.diff(mu, dim=2 + axis)
        total = total + diff.pow(2).flatten(2).sum(-1)
    return total


class PriorKLLoss(nn.Module):
    """KL[q(z) || p(z)] of the module docstring, per field entry, averaged over the batch.

    Args:
        prior_lambda: ``lambda`` of the Laplacian prior (larger: smoother fields).
        smoothing: the posterior smoothing ``C`` (None or sigma 0: the diagonal posterior).

    Call with ``mu`` and ``log_var`` (``log sigma^2``), both ``(B, D, *S)``.
    """

    def __init__(self, prior_lambda: float = 20.0, smoothing: GaussianSmoothing | None = None) -> None:
        super().__init__()
        if prior_lambda <= 0:
            raise ValueError(f"PriorKLLoss: prior_lambda must be > 0, got {prior_lambda}.")
        self.prior_lambda = float(prior_lambda)
        self.smoothing = smoothing
        self._kappa: dict[tuple[int, ...], torch.Tensor] = {}

    def kappa(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        key = tuple(int(s) for s in shape)
        if key not in self._kappa:
            self._kappa[key] = laplacian_trace_weights(key, self.smoothing)
        return self._kappa[key].to(device=like.device, dtype=like.dtype)

    def forward(self, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        if mu.shape != log_var.shape or mu.dim() not in (4, 5):
            raise ValueError(f"PriorKLLoss: mu {tuple(mu.shape)} and log_var {tuple(log_var.shape)} must be equal "
                             "(B, D, *S) shapes.")  # fmt: skip
        lam = self.prior_lambda
        kappa = self.kappa(mu.shape[2:], mu)
        trace = (kappa * log_var.exp()).flatten(2).sum(-1)  # (B, D)
        quad = laplacian_quadratic(mu)
        logdet = log_var.flatten(2).sum(-1)
        kl = 0.5 * (lam * trace + lam * quad - logdet)  # (B, D), up to a constant
        return kl.sum(1).mean() / mu[0].numel()


def sample_velocity(mu: torch.Tensor, log_var: torch.Tensor, smoothing: GaussianSmoothing | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """One reparameterised posterior sample ``z = mu + C (sigma * r)``, ``r ~ N(0, I)``."""
    r = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    noise = (0.5 * log_var).exp() * r
    return mu + (smoothing(noise) if smoothing is not None else noise)
