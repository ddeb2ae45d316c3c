"""Shared by the I/O tests: the real data's LIA orientation, an oblique anisotropic variant, smooth fields."""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch

# Header of /work/shared/data/brain_t1_oasis/oasis_c_t1_160x192x224.nii.gz (LIA, 1 mm): only the numbers.
OASIS_LIA = np.array([[-1.0, 0.0, 0.0, 80.0], [0.0, 0.0, 1.0, -112.0], [0.0, -1.0, 0.0, 96.0], [0.0, 0.0, 0.0, 1.0]])


def oblique_lia(spacing=(1.2, 0.9, 1.5), degrees: float = 10.0, origin=(30.0, -20.0, 15.0)) -> np.ndarray:
    """LIA axes rotated by ``degrees`` about RAS z and x, anisotropic ``spacing`` (mm), non-zero origin."""
    a = np.deg2rad(degrees)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    lia = OASIS_LIA[:3, :3]
    out = np.eye(4)
    out[:3, :3] = rz @ rx @ lia @ np.diag(spacing)
    out[:3, 3] = origin
    return out


def smooth_field(shape, amplitude: float = 2.0, coarse: int = 4, seed: int = 0) -> torch.Tensor:
    """``(1, D, *shape)`` float64 random field in voxels, cubic-spline upsampled from a coarse grid."""
    rng = np.random.default_rng(seed)
    dims = len(shape)
    comps = [
        scipy.ndimage.zoom(rng.normal(size=(coarse,) * dims), [s / coarse for s in shape], order=3) for _ in range(dims)
    ]
    return torch.tensor(np.stack(comps) * amplitude)[None]
