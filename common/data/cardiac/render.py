"""Render bSSFP-like ED/ES images from the phantom's exact label maps.

Rendering of one subject (:func:`render_cardiac_phantom`), deterministic given its parameters:

1. geometry: exact ED/ES label and tissue maps and the ES->ED displacement
   (:func:`common.data.cardiac.phantom.phantom_geometry`);
2. ED texture fields: the surroundings, made of ``n_background_regions`` "organs" (soft argmax of
   smoothed Gaussian random fields with power spectrum ``P(f) ~ f**-texture_slope``, the slope measured
   on real slices) whose intensities are drawn from the background quantiles of one real bSSFP slice
   (row ``stats_row`` of the shipped table, :mod:`common.data.cardiac.stats`) and kept below 60 % of the
   blood level, bright fat planes along some region borders, a bright epicardial fat band, bright
   vessel cross-sections, and a fine multiplicative texture (random field with slope 2); plus a smooth
   relative modulation of the tissue intensities;
3. ES texture fields: the ED ones warped by the ES->ED displacement (:func:`common.blocks.warp`), so the
   surroundings and tissue texture move with the heart instead of being redrawn;
4. per frame: LV blood, RV blood, muscle (myocardium, RV wall, papillary muscles) and background levels
   painted from the tissue map (bright blood pools, dark muscle, mid-grey surroundings), Gaussian blur
   (``psf_sigma_px``), a smooth multiplicative coil-sensitivity field shared by both frames, Rician
   noise (independent per frame), and the project's percentile normalisation to [0, 1]
   (:func:`common.data.cardiac.preprocess.normalise_percentile`), as for real slices.

The label maps returned are those the images were painted from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from common.blocks.warp import warp
from common.data.cardiac.phantom import CardiacPhantomParams, phantom_geometry
from common.data.cardiac.preprocess import normalise_percentile
from common.data.cardiac.stats import load_cardiac_stats

__all__ = ["gaussian_random_field", "render_cardiac_phantom"]

_STATS_CACHE: dict[str, Any] = {}


def _default_stats() -> dict[str, Any]:
    if "default" not in _STATS_CACHE:
        _STATS_CACHE["default"] = load_cardiac_stats()
    return _STATS_CACHE["default"]


def gaussian_random_field(shape: tuple[int, int], slope: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance 2D Gaussian random field with power spectrum ``P(f) ~ f**-slope``.

    Args:
        shape: ``(H, W)`` in pixels.
        slope: spectral slope beta (larger = smoother); frequencies below 1/max(H, W) are flattened.
        rng: random generator (the field is deterministic given its state).
    """
    f0 = np.fft.fftfreq(shape[0])[:, None]
    f1 = np.fft.rfftfreq(shape[1])[None, :]
    f = np.maximum(np.hypot(f0, f1), 1.0 / max(shape))
    spectrum = np.fft.rfft2(rng.standard_normal(shape)) * f ** (-slope / 2.0)
    field = np.fft.irfft2(spectrum, s=shape)
    field -= field.mean()
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


def _levels(p: CardiacPhantomParams, row: dict[str, Any]) -> np.ndarray:
    """Intensity per tissue class 1..5 (RV blood, myocardium, LV blood, RV wall, papillary muscle)."""
    blood = float(np.median(row["blood"])) * p.blood_scale
    myo = float(np.median(row["myocardium"])) * p.myo_scale
    return np.array([blood * p.rv_blood_ratio, myo, blood, myo, 1.05 * myo], dtype=np.float32)


def _paint(fractions: np.ndarray, background: np.ndarray, modulation: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Partial-volume painting: sum over tissues of (area fraction x tissue intensity)."""
    tissue = np.tensordot(levels, fractions[1:], axes=1) * (1.0 + modulation)
    return fractions[0] * background + tissue


def _background(
    p: CardiacPhantomParams,
    row: dict[str, Any],
    levels: list[float],
    geo: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """ED surroundings: random smooth regions, bright fat planes and rim, fine texture (normalised units)."""
    shape = tuple(p.size)
    q_levels = np.asarray(levels, dtype=np.float64)
    q_values = np.asarray(row["background"], dtype=np.float64)
    median = float(np.interp(0.5, q_levels, q_values))
    q_values = np.clip(median + p.background_contrast * (q_values - median), 0.0, 1.0)

    def intensity(quantile: np.ndarray | float) -> np.ndarray:
        return np.interp(quantile, q_levels, q_values)

    # "organs": soft argmax of smooth random fields -> regions with smooth, anti-aliased borders
    k = p.n_background_regions
    fields = np.stack([ndi.gaussian_filter(gaussian_random_field(shape, p.texture_slope, rng), 3.0) for _ in range(k)])
    width = 0.7 * float(np.median(np.hypot(*np.gradient(fields[0])))) + 1e-6  # ~1.5 px transitions
    weights = np.exp((fields - fields.max(axis=0)) / width)
    weights /= weights.sum(axis=0)
    blood = float(np.median(row["blood"])) * p.blood_scale
    # bSSFP: only fat rivals blood; organs and muscle stay below 60 % of the blood level
    levels_k = np.minimum(intensity(rng.uniform(0.0, 0.9, k)), 0.6 * blood)
    image = np.tensordot(levels_k, weights, axes=1)
    # fat planes: thin bright lines along the borders of some regions
    bright = rng.uniform(size=k) < p.fat_line_fraction
    fat = intensity(rng.uniform(0.93, 0.99))
    if bright.any():
        line = np.max((4.0 * weights[bright] * (1.0 - weights[bright])) ** 2, axis=0)
        image = image * (1.0 - line) + fat * line
    # epicardial fat band just outside the heart over part of its circumference
    dtheta = np.angle(np.exp(1j * (geo["ed_theta"] - np.radians(p.fat_rim_angle_deg))))
    dist = geo["ed_outside_mm"]
    cover = np.clip(np.minimum(dist, p.fat_rim_mm - dist) / p.spacing_mm + 0.5, 0.0, 1.0)  # partial volume
    cover = cover * (np.abs(dtheta) < np.radians(p.fat_rim_span_deg) / 2) * (dist >= 0)
    image = image * (1.0 - cover) + fat * cover
    x0, x1 = np.meshgrid(*((np.arange(n) - (n - 1) / 2.0) * p.spacing_mm for n in shape), indexing="ij")
    for c0, c1, radius in p.vessels:
        disc = np.clip(radius / p.spacing_mm + 0.5 - np.hypot(x0 - c0, x1 - c1) / p.spacing_mm, 0.0, 1.0)
        disc[geo["ed_outside_mm"] < 2.0 + radius] = 0.0  # keep vessels off the heart
        image = image * (1.0 - disc) + 0.85 * blood * disc
    image = ndi.gaussian_filter(image, 0.7)
    texture = gaussian_random_field(shape, 2.0, rng)
    return (image * (1.0 + p.texture_amplitude * texture)).astype(np.float32)


def render_cardiac_phantom(
    params: CardiacPhantomParams,
    stats: dict[str, Any] | None = None,
    with_ddf: bool = False,
    supersample: int = 3,
) -> dict[str, np.ndarray]:
    """Render one ED/ES subject.

    Args:
        params: subject parameters (:func:`common.data.cardiac.phantom.sample_phantom_params`).
        stats: intensity statistics table (default: the shipped ``common/data/cardiac_stats.json``).
        with_ddf: also return the ES->ED displacement (voxels, on the ES grid, pull-back).
        supersample: odd sub-pixel factor for partial-volume edges (1 = paint the label maps as they are).

    Returns:
        ``ed_image``, ``es_image``: ``(H, W)`` float32 in [0, 1]; ``ed_label``, ``es_label``: ``(H, W)``
        uint8 (1 RV, 2 myocardium, 3 LV cavity); ``ddf``: ``(2, H, W)`` float32 if ``with_ddf``.

    Raises:
        ValueError: parameters out of range, or ``stats_row`` not in the statistics table.
    """
    stats = stats if stats is not None else _default_stats()
    if not 0 <= params.stats_row < len(stats["rows"]):
        raise ValueError(
            f"render_cardiac_phantom: stats_row={params.stats_row} is not a row of the statistics table "
            f"({len(stats['rows'])} rows)."
        )
    geo = phantom_geometry(params, supersample)
    row = stats["rows"][params.stats_row]
    rng = np.random.default_rng(params.texture_seed)
    shape = tuple(params.size)

    background = _background(params, row, stats["quantile_levels"], geo, rng)
    modulation = params.tissue_modulation * gaussian_random_field(shape, 3.0, rng)
    bias_field = gaussian_random_field(shape, 4.0, rng)
    bias = 1.0 + params.bias_amplitude * bias_field / max(float(np.abs(bias_field).max()), 1e-6)

    ed_fields = torch.from_numpy(np.stack([background, modulation]).astype(np.float32))[None]
    es_fields = warp(ed_fields, torch.from_numpy(geo["ddf"])[None])[0].numpy()
    levels = _levels(params, row)
    out: dict[str, np.ndarray] = {}
    for name, fractions, fields in (
        ("ed", geo["ed_fractions"], ed_fields[0].numpy()),
        ("es", geo["es_fractions"], es_fields),
    ):
        image = _paint(fractions, fields[0], fields[1], levels)
        image = ndi.gaussian_filter(image, params.psf_sigma_px, mode="nearest") * bias
        noisy = np.hypot(
            image + params.noise_sigma * rng.standard_normal(shape),
            params.noise_sigma * rng.standard_normal(shape),
        )
        out[f"{name}_image"] = normalise_percentile(noisy)
        out[f"{name}_label"] = geo[f"{name}_label"]
    if with_ddf:
        out["ddf"] = geo["ddf"]
    return out
