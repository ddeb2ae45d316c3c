"""Reading a registration pair for bundle inference: the datalist of pairs and the loading transform.

:class:`LoadRegistrationPaird` reads the files (clear errors naming the file), builds the network grid from the fixed
image (training orientation and spacing, :mod:`common.geometry`), resamples both images onto it and scales
intensities to [0, 1] with percentiles, the training rule (:func:`normalise_intensity`). The rest of the inference
flow is in :mod:`common.engines.inference`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from common.geometry import (
    block_average,
    check_grid_mode,
    network_grid,
    pool_factors,
    resample_to_grid,
)
from common.io.nifti import ImageReadError, read_label_map, read_nifti

__all__ = ["normalise_intensity", "pair_datalist", "LoadRegistrationPaird"]


def normalise_intensity(image: np.ndarray | torch.Tensor, lower: float = 0.5, upper: float = 99.5):
    """Linear map of the [lower, upper] percentiles to [0, 1], values outside clipped (documented, deliberate)."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    lo, hi = np.percentile(arr, [lower, upper])
    if not hi > lo:
        raise ValueError(f"normalise_intensity: image is constant (all voxels ~{float(lo):.4g}); nothing to register.")
    out = np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return torch.as_tensor(out) if isinstance(image, torch.Tensor) else out


def _is_relative_file(key: str, value: Any) -> bool:
    """Only image/label path entries are resolved against the datalist's folder (ids and other fields are not)."""
    return isinstance(value, str) and key.endswith(("_image", "_label")) and not os.path.isabs(value)


def pair_datalist(
    moving: str | None = None,
    fixed: str | None = None,
    moving_label: str | None = None,
    fixed_label: str | None = None,
    datalist: str | None = None,
    section: str = "test",
) -> list[dict[str, Any]]:
    """One pair from paths, or the pairs of a datalist JSON (``{"test": [{"moving_image": ..., ...}]}``)."""
    if datalist:
        from common.data.datalist import read_json_file

        p = Path(datalist)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: datalist not found.")
        data = read_json_file(p, "pair_datalist")
        items = data.get(section) if isinstance(data, dict) else data
        if not isinstance(items, list) or not items:
            raise ValueError(f"{p}: expected a non-empty list under '{section}' (or a top-level list).")
        base = p.absolute().parent  # absolute: batch reads the entries again from a copy in the output folder
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "moving_image" not in item or "fixed_image" not in item:
                raise ValueError(f"{p}: entry {i} of '{section}' needs 'moving_image' and 'fixed_image'.")
            for key, value in item.items():
                if (
                    key.endswith(("_image", "_label"))
                    and value is not None
                    and (not isinstance(value, str) or not value)
                ):
                    raise ValueError(
                        f"{p}: entry {i} of '{section}': {key} must be a file path (a non-empty string), got {value!r}."
                    )
            out.append({k: (str(base / v) if _is_relative_file(k, v) else v) for k, v in item.items()})
        return out
    if not moving or not fixed:
        raise ValueError("pair_datalist: give --moving and --fixed image paths, or --datalist.")
    item = {"moving_image": str(moving), "fixed_image": str(fixed)}
    if moving_label:
        item["moving_label"] = str(moving_label)
    if fixed_label:
        item["fixed_label"] = str(fixed_label)
    return [item]


class LoadRegistrationPaird(MapTransform):
    """Read a moving/fixed pair (+ optional labels) and put both images on the network grid.

    Args:
        spacing: training spacing in mm (array order of ``axcodes``).
        axcodes: training orientation (e.g. ``"LIA"``); None keeps the fixed image's.
        multiple: pad/crop the network grid to a multiple of this.
        shape: exact network grid shape instead of ``multiple``.
        grid_mode: ``"fit_extent"`` or ``"exact_spacing"`` (the grid MONAI ``Spacingd`` builds), see
            :func:`common.geometry.network_grid`; a bundle trained on ``Spacingd``-downsampled arrays
            needs ``"exact_spacing"``.
        spatial_dims: 2 or 3.
        max_voxels: refuse images whose network grid would exceed this many voxels (clear message, no OOM kill).
        data_spacing: spacing (mm) of the data the network was trained on; an image whose voxels are at least
            twice finer is first block-averaged to about that spacing (:func:`common.geometry.block_average`,
            the rule that made the training data), so a 1 mm input is anti-aliased exactly as training was.
            ``None``: no averaging (resampling only).
    """

    def __init__(
        self,
        spacing: Sequence[float],
        axcodes: str | None = None,
        multiple: int = 16,
        shape: Sequence[int] | None = None,
        spatial_dims: int = 3,
        max_voxels: int = 64_000_000,
        grid_mode: str = "fit_extent",
        data_spacing: float | None = None,
    ) -> None:
        super().__init__(keys=["moving_image", "fixed_image"])
        self.data_spacing = None if data_spacing is None else float(data_spacing)
        check_grid_mode(grid_mode, "LoadRegistrationPaird")
        self.grid_mode = grid_mode
        self.spacing, self.axcodes, self.multiple = tuple(spacing), axcodes, multiple
        self.shape, self.dims, self.max_voxels = shape, spatial_dims, max_voxels

    def _read(self, path: str, what: str) -> tuple[np.ndarray, np.ndarray]:
        reader = read_label_map if what.endswith("label") else read_nifti
        arr, aff = reader(path, ndim=self.dims)
        if self.dims == 2 and aff.shape == (4, 4):
            aff = np.delete(np.delete(aff, 2, 0), 2, 1)
        return arr, aff

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        d["t_start"] = t_start = time.perf_counter()
        mov, mov_aff = self._read(d["moving_image"], "moving")
        fix, fix_aff = self._read(d["fixed_image"], "fixed")
        for aff, key in ((mov_aff, "moving_image"), (fix_aff, "fixed_image")):
            sp = np.sqrt((aff[: self.dims, : self.dims] ** 2).sum(0))
            if not np.all(np.isfinite(sp)) or sp.min() < 0.05 or sp.max() > 50.0:
                raise ImageReadError(
                    f"{d[key]}: voxel spacing {tuple(round(float(v), 6) for v in sp)} mm is outside 0.05-50 mm; "
                    "the header's affine is probably wrong."
                )
        for arr, key in ((mov, "moving_image"), (fix, "fixed_image")):
            if float(arr.max()) == float(arr.min()):
                raise ImageReadError(
                    f"{d[key]}: image is constant ({float(arr.min()):.4g} everywhere); nothing to register."
                )
        for key, img_arr, img_aff in (("moving_label", mov, mov_aff), ("fixed_label", fix, fix_aff)):
            if d.get(key):
                lab, lab_aff = self._read(d[key], key)
                image_key = key.replace("label", "image")
                if lab.shape != img_arr.shape or not np.allclose(lab_aff, img_aff, atol=1e-3):
                    raise ImageReadError(
                        f"{d[key]}: label geometry (shape {lab.shape}) does not match {d[image_key]} "
                        f"(shape {img_arr.shape}) or their affines differ; labels must be on their image's grid."
                    )
                if not np.any(lab):
                    raise ImageReadError(f"{d[key]}: label map is empty (all background).")
        # block means first, then the percentile scaling: the order that made the training data
        t_mov, mov_src = block_average(
            torch.as_tensor(mov)[None, None], mov_aff, pool_factors(mov_aff, self.data_spacing)
        )
        t_fix, fix_src = block_average(
            torch.as_tensor(fix)[None, None], fix_aff, pool_factors(fix_aff, self.data_spacing)
        )
        t_mov = torch.as_tensor(normalise_intensity(t_mov[0, 0].numpy()))[None, None]
        t_fix = torch.as_tensor(normalise_intensity(t_fix[0, 0].numpy()))[None, None]
        net_aff, net_shape = network_grid(
            fix_src, tuple(t_fix.shape[2:]), self.spacing, self.axcodes, self.multiple, self.shape, self.grid_mode
        )
        if int(np.prod(net_shape)) > self.max_voxels:
            raise ImageReadError(
                f"{d['fixed_image']}: network grid {net_shape} ({np.prod(net_shape) / 1e6:.0f} M voxels, about "
                f"{np.prod(net_shape) * 4 * 60 / 2**30:.0f} GiB to process) exceeds the {self.max_voxels / 1e6:.0f} M "
                "voxel limit; check the header spacing or crop the image."
            )
        d["moving_image"] = resample_to_grid(t_mov, mov_src, net_aff, net_shape)[0]
        d["fixed_image"] = resample_to_grid(t_fix, fix_src, net_aff, net_shape)[0]
        d["geometry"] = {
            "net_affine": torch.as_tensor(net_aff),
            "fixed_affine": torch.as_tensor(fix_aff),
            "moving_affine": torch.as_tensor(mov_aff),
            "fixed_shape": torch.as_tensor(fix.shape),
        }
        d["pair_id"] = str(data["id"]) if data.get("id") else ""
        d["paths"] = {
            k: str(data[k]) for k in ("moving_image", "fixed_image", "moving_label", "fixed_label") if data.get(k)
        }
        for key in ("moving_label", "fixed_label"):
            d.pop(key, None)  # read on the original grids at output time
        d["seconds_read"] = time.perf_counter() - t_start
        return d
