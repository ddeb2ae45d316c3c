"""Synthetic images, label maps and fields shared by the loss tests (tiny sizes, float64)."""

from __future__ import annotations

import torch

from common.blocks import one_hot, warp


def grid(shape: tuple[int, ...]) -> list[torch.Tensor]:
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    return list(torch.meshgrid(*axes, indexing="ij"))


def blob_image(shape: tuple[int, ...]) -> torch.Tensor:
    """Two smooth Gaussian blobs in (0, 1], shape ``(1, 1, *shape)``."""
    g = grid(shape)

    def blob(centre, sigma):
        return torch.exp(-sum((gi - c) ** 2 for gi, c in zip(g, centre)) / (2 * sigma**2))

    centre = [(n - 1) / 2 for n in shape]
    off = [0.3 * n for n in shape]
    return (0.7 * blob(centre, shape[0] / 8) + 0.3 * blob(off, shape[0] / 16))[None, None]


def shift_x(image: torch.Tensor, voxels: float) -> torch.Tensor:
    """Pull-back warp by a constant displacement of ``voxels`` along the first spatial axis."""
    ddf = torch.zeros(image.shape[0], image.ndim - 2, *image.shape[2:], dtype=image.dtype)
    ddf[:, 0] = voxels
    return warp(image, ddf)


def ball_labels(shape: tuple[int, ...], num_classes: int = 3) -> torch.Tensor:
    """One-hot ``(1, K, *shape)`` of concentric balls (background 0, then shells)."""
    g = grid(shape)
    r = torch.sqrt(sum((gi - (n - 1) / 2) ** 2 for gi, n in zip(g, shape)))
    lab = torch.zeros(shape, dtype=torch.long)
    for k in range(1, num_classes):
        lab[r < shape[0] * (0.4 - 0.12 * (k - 1))] = k
    return one_hot(lab[None, None], num_classes, dtype=torch.float64)


def affine_field(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine displacement ``u(x) = A x + t`` (voxels), returns ``(ddf (1, D, *S), A)``."""
    gen = torch.Generator().manual_seed(seed)
    dims = len(shape)
    a = torch.randn(dims, dims, generator=gen, dtype=torch.float64) * 0.1
    t = torch.randn(dims, generator=gen, dtype=torch.float64)
    x = torch.stack(grid(shape))  # (D, *S)
    u = torch.einsum("jk,k...->j...", a, x) + t.view(dims, *([1] * dims))
    return u[None], a


def smooth_field(shape: tuple[int, ...], seed: int = 0, amplitude: float = 1.0) -> torch.Tensor:
    """Random smooth non-affine field (voxels): each component a sum of random low-frequency sinusoids."""
    gen = torch.Generator().manual_seed(seed)
    dims = len(shape)
    x = grid(shape)
    comps = []
    for _ in range(dims):
        u = torch.zeros(shape, dtype=torch.float64)
        for _ in range(3):
            k = torch.randn(dims, generator=gen, dtype=torch.float64) * 0.3
            phase = float(torch.rand(1, generator=gen)) * 6.28
            u = u + torch.sin(sum(ki * xi for ki, xi in zip(k, x)) + phase)
        comps.append(amplitude * u)
    return torch.stack(comps)[None]
