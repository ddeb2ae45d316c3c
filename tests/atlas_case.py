"""A known-answer case for atlas segmentation: the atlas moved by a known rigid map onto another grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates


def rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def moved_atlas(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Atlas T1 and labels moved by a known rigid map onto a RAS 1.25 mm grid; returns (image path, truth, id)."""
    from common.engines.atlas import default_atlas

    t1_path, lab_path = default_atlas(1)
    t1, lab = nib.load(t1_path), nib.load(lab_path)
    shape = (128, 150, 128)
    grid = np.diag([1.25, 1.25, 1.25, 1.0])
    grid[:3, 3] = -np.array(shape) * 1.25 / 2 + np.array([0.0, -16.0, 14.0])
    world = np.eye(4)  # image world point -> atlas world point
    world[:3, :3] = rotation(9.0, -6.0)
    world[:3, 3] = [6.0, -5.0, 4.0]
    vox = np.linalg.inv(t1.affine) @ world @ grid
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")).reshape(3, -1)
    coords = vox[:3, :3] @ idx + vox[:3, 3:4]
    image = map_coordinates(np.asarray(t1.dataobj, np.float32), coords, order=1).reshape(shape)
    truth = map_coordinates(np.asarray(lab.dataobj), coords, order=0).reshape(shape).astype(np.int16)
    path = folder / "moved_atlas.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.float32), grid), path)
    # what the atlas labels give with no registration at all (same world coordinates): the chance reference
    ident = np.linalg.inv(t1.affine) @ grid
    none = map_coordinates(np.asarray(lab.dataobj), ident[:3, :3] @ idx + ident[:3, 3:4], order=0).reshape(shape)
    return path, truth, none.astype(np.int16)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    codes = [c for c in np.unique(b) if c > 0]
    return float(np.mean([2 * ((a == c) & (b == c)).sum() / max((a == c).sum() + (b == c).sum(), 1) for c in codes]))
