"""Intensity and texture statistics of real bSSFP short-axis slices, shipped as a small JSON table.

:func:`compute_bssfp_stats` measures, on real cine-bSSFP stacks, what the synthetic phantom
(:mod:`common.data.cardiac.phantom`) needs to look like them after the project's slice preprocessing
(1.5 mm pixels, 112 x 112 crop around the heart, percentile normalisation to [0, 1]):

* per-tissue intensity quantiles of the LV blood pool, the myocardium and the surroundings;
* the noise level (robust standard deviation of neighbour differences inside the blood pool);
* the slope ``beta`` of the radially averaged power spectrum ``P(f) ~ f**-beta`` of the crop, which the
  phantom uses for its random background texture;
* the LV blood-pool area, to check the phantom's geometry ranges.

The stacks have no segmentations, so the tissues come from a heuristic: the LV blood pool is the most
circular bright connected component near the image centre (several thresholds tried), the myocardium a
2-5 mm ring outside it without bright pixels, the surroundings everything more than 12 mm away. Slices
where this fails (no round bright blob, low contrast) are skipped. One slice (the best-scoring) per stack
is kept, so each table row describes one real image and the phantom samples rows jointly (blood, muscle
and background levels of one real scan stay together).

The shipped table ``common/data/cardiac_stats.json`` was computed once by :func:`write_cardiac_stats`
from the 45 MyoPS 2020 bSSFP stacks (``cardiac_myops_bssfp/NNN_C0.nii.gz``, 0.73-0.75 mm, redistributed
in ucl-candi/datasets_deepreg_demo, branch ``myops``); it holds summary numbers only, no image data. The
phantom needs only that JSON at run time.

References:
    Zhuang et al., "Myocardial pathology segmentation combining multi-sequence cardiac magnetic resonance
    images" (MyoPS 2020 challenge), Springer LNCS 12554, 2020.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from common.data.cardiac.preprocess import (
    DEFAULT_PERCENTILES,
    crop_center,
    normalise_percentile,
    resample_inplane,
)
from common.io.nifti import atomic_path, read_nifti

__all__ = [
    "DEFAULT_STATS_PATH",
    "QUANTILE_LEVELS",
    "compute_bssfp_stats",
    "load_cardiac_stats",
    "write_cardiac_stats",
]

DEFAULT_STATS_PATH: Path = Path(__file__).resolve().parent.parent / "cardiac_stats.json"
QUANTILE_LEVELS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
_REQUIRED_ROW_KEYS = ("blood", "myocardium", "background", "noise_sigma", "psd_slope")


def _find_lv_blood_pool(img: np.ndarray, spacing: float) -> tuple[float, np.ndarray] | None:
    """Most circular, high-contrast bright blob near the centre of a normalised slice; (score, mask)."""
    centre = (np.asarray(img.shape) - 1) / 2.0
    best: tuple[float, np.ndarray] | None = None
    for thr in (0.35, 0.45, 0.55):
        lab, n = ndi.label(ndi.binary_opening(img > thr))
        for i in range(1, n + 1):
            comp = ndi.binary_fill_holes(lab == i)
            area = comp.sum() * spacing**2
            if not 300.0 < area < 4500.0:
                continue
            dist_c = float(np.hypot(*(np.asarray(ndi.center_of_mass(comp)) - centre))) * spacing
            if dist_c > 70.0:
                continue
            perimeter = (comp ^ ndi.binary_erosion(comp)).sum() * spacing
            circularity = 4.0 * np.pi * area / (perimeter**2 + 1e-6)
            dist = ndi.distance_transform_edt(~comp) * spacing
            contrast = float(img[comp].mean() - np.median(img[(dist > 1.5) & (dist < 5.0)]))
            if circularity < 0.85 or contrast < 0.25:
                continue
            score = circularity * contrast - dist_c / 300.0
            if best is None or score > best[0]:
                best = (score, comp)
    return best


def _psd_slope(crop: np.ndarray) -> float:
    """Slope beta of the radially averaged power spectrum, P(f) ~ f**-beta, fitted on 0.04-0.3 cycles/px."""
    n0, n1 = crop.shape
    window = np.outer(np.hanning(n0), np.hanning(n1))
    power = np.abs(np.fft.fftshift(np.fft.fft2((crop - crop.mean()) * window))) ** 2
    f0, f1 = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(n0)), np.fft.fftshift(np.fft.fftfreq(n1)), indexing="ij")
    radius = np.hypot(f0, f1)
    edges = np.linspace(0.04, 0.3, 14)
    which = np.digitize(radius.ravel(), edges)
    freqs, pows = [], []
    for b in range(1, len(edges)):
        sel = which == b
        if sel.any():
            freqs.append(radius.ravel()[sel].mean())
            pows.append(power.ravel()[sel].mean())
    slope = np.polyfit(np.log(freqs), np.log(np.asarray(pows) + 1e-12), 1)[0]
    return float(-slope)


def _slice_row(raw: np.ndarray, spacing: tuple[float, float], new_spacing: float, size: int) -> dict | None:
    """Statistics of one real slice, or None when the LV blood pool is not found."""
    img = resample_inplane(raw, spacing, new_spacing)
    found = _find_lv_blood_pool(normalise_percentile(img), new_spacing)
    if found is None:
        return None
    score, pool = found
    centre = ndi.center_of_mass(pool)
    crop = normalise_percentile(crop_center(img, centre, size, fill=float(img.min())), DEFAULT_PERCENTILES)
    pool_c = crop_center(pool.astype(np.uint8), centre, size) > 0
    dist = ndi.distance_transform_edt(~pool_c) * new_spacing
    blood = crop[ndi.binary_erosion(pool_c, iterations=1)]
    myo_ring = (dist > 2.0) & (dist < 5.0)
    myo = crop[myo_ring & (crop < np.quantile(blood, 0.1))]
    background = crop[dist > 12.0]
    if blood.size < 50 or myo.size < 50:
        return None
    interior = ndi.binary_erosion(pool_c, iterations=2)
    diffs = np.concatenate(
        [(crop[1:, :] - crop[:-1, :])[interior[1:, :] & interior[:-1, :]],
         (crop[:, 1:] - crop[:, :-1])[interior[:, 1:] & interior[:, :-1]]]
    )  # fmt: skip
    noise = 1.4826 * float(np.median(np.abs(diffs - np.median(diffs)))) / np.sqrt(2.0) if diffs.size else 0.02
    q = np.asarray(QUANTILE_LEVELS)
    return {
        "score": round(float(score), 4),
        "blood": [round(float(v), 4) for v in np.quantile(blood, q)],
        "myocardium": [round(float(v), 4) for v in np.quantile(myo, q)],
        "background": [round(float(v), 4) for v in np.quantile(background, q)],
        "noise_sigma": round(noise, 4),
        "psd_slope": round(_psd_slope(crop), 3),
        "lv_area_mm2": round(float(pool.sum()) * new_spacing**2, 1),
    }


def compute_bssfp_stats(folder: str | os.PathLike, spacing_mm: float = 1.5, size: int = 112) -> dict[str, Any]:
    """Measure tissue intensity quantiles, noise and texture slope on real bSSFP short-axis stacks.

    Args:
        folder: folder of ``*.nii.gz`` short-axis stacks ``(X, Y, Z)`` (one cardiac phase each).
        spacing_mm: in-plane pixel size in mm the slices are resampled to before measuring.
        size: crop size in pixels around the detected LV blood pool.

    Returns:
        ``{"quantile_levels", "spacing_mm", "size", "percentiles", "source", "rows": [...]}``, one row per
        stack whose LV blood pool was found (best slice of the stack).

    Raises:
        ValueError: no NIfTI files in ``folder``, or the blood pool was found in none of them.
    """
    files = sorted(Path(folder).glob("*.nii*"))
    if not files:
        raise ValueError(f"compute_bssfp_stats: no NIfTI files in {folder}.")
    rows = []
    for path in files:
        data, affine = read_nifti(path, ndim=3)
        spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :2], axis=0))
        candidates = [_slice_row(data[:, :, z], spacing, spacing_mm, size) for z in range(data.shape[2])]
        candidates = [c for c in candidates if c is not None]
        if candidates:
            row = max(candidates, key=lambda c: c["score"])
            row["file"] = path.name
            rows.append(row)
    if not rows:
        raise ValueError(f"compute_bssfp_stats: the LV blood pool was found in none of the {len(files)} stacks.")
    return {
        "source": "MyoPS 2020 bSSFP (C0) short-axis stacks via ucl-candi/datasets_deepreg_demo "
        "(branch myops); summary statistics only, computed by common.data.cardiac.stats.compute_bssfp_stats",
        "quantile_levels": list(QUANTILE_LEVELS),
        "spacing_mm": spacing_mm,
        "size": size,
        "percentiles": list(DEFAULT_PERCENTILES),
        "rows": rows,
    }


def write_cardiac_stats(folder: str | os.PathLike, path: str | os.PathLike = DEFAULT_STATS_PATH) -> Path:
    """Compute :func:`compute_bssfp_stats` on ``folder`` and write it as JSON to ``path`` (atomically)."""
    stats = compute_bssfp_stats(folder)
    head = json.dumps({k: v for k, v in stats.items() if k != "rows"}, indent=1)[:-2]
    rows = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in stats["rows"])  # one line per slice
    with atomic_path(path) as tmp:
        tmp.write_text(f'{head},\n "rows": [\n  {rows}\n ]\n}}\n')
    return Path(path)


def load_cardiac_stats(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Load and validate a statistics table (default: the shipped ``common/data/cardiac_stats.json``).

    Raises:
        ValueError: missing or unreadable file, or rows without the expected keys / quantile counts.
    """
    p = Path(path) if path is not None else DEFAULT_STATS_PATH
    try:
        stats = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"load_cardiac_stats: {p}: cannot read statistics ({type(exc).__name__}: {exc}).") from exc
    levels = stats.get("quantile_levels") if isinstance(stats, dict) else None
    rows = stats.get("rows") if isinstance(stats, dict) else None
    if not levels or not rows:
        raise ValueError(f"load_cardiac_stats: {p}: needs non-empty 'quantile_levels' and 'rows'.")
    for i, row in enumerate(rows):
        missing = [k for k in _REQUIRED_ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"load_cardiac_stats: {p}: row {i} lacks {missing}.")
        for key in ("blood", "myocardium", "background"):
            if len(row[key]) != len(levels):
                raise ValueError(
                    f"load_cardiac_stats: {p}: row {i} '{key}' has {len(row[key])} quantiles, expected {len(levels)}."
                )
    return stats
