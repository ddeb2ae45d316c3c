"""Random parameters for the synthetic cardiac phantom (:mod:`common.data.cardiac.phantom`).

:func:`sample_phantom_params` draws every field of :class:`~common.data.cardiac.phantom.CardiacPhantomParams`
uniformly from the ranges of :class:`PhantomRanges` (deterministic for a seed). Default ranges and why:

* LV cavity radius 14-31 mm at ED (cavity area 620-3020 mm^2; the LV blood pools found in the 45 real
  bSSFP slices of the statistics table span 310-3000 mm^2, median 1730), axis ratio 0.8-1;
* wall thickness 5.5-10.5 mm at ED, varying by up to +-25 % around the ring;
* RV crescent: depth 12-30 mm, half-span 60-95 degrees around the septum direction, which is drawn over
  the full circle (narrow ``rv_angle_deg`` to mimic one acquisition orientation);
* contraction: LV cavity area -30 to -60 % (ejection fraction of a mid-ventricular slice), myocardial
  sector area x1.0-1.15 (through-plane shortening brings tissue into the slice), RV depth -25 to -50 %,
  twist +-6 degrees, translation up to 3 mm;
* appearance: one real slice's statistics row (blood, muscle, surroundings together), blood x0.9-1.05,
  muscle x0.85-1.15, RV blood 85-100 % of LV blood, 3-7 background regions, 0-8 vessels, 0-2 papillary
  muscles and 0-6 trabeculae, blur 0.4-0.9 px, noise 0.2-0.6 x the row's measured noise (that estimate
  includes blood-pool texture, so it is an upper bound).

The heart is placed so that the LV + RV, not the LV alone, sits near the image centre (as after a crop
around the label centroid), jittered by up to 5 mm per axis. The ranges are for a field of view of about
168 mm (112 pixels of 1.5 mm), where the largest heart stays inside the image (checked on 400 seeds);
for a smaller field of view, scale the length ranges down or the heart is cut at the border.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.data.cardiac.phantom import CardiacPhantomParams

__all__ = ["PhantomRanges", "sample_phantom_params"]


@dataclass(frozen=True)
class PhantomRanges:
    """Uniform sampling ranges ``(low, high)`` of :func:`sample_phantom_params` (mm, degrees, fractions)."""

    # end-diastolic anatomy: left ventricle, myocardium, right ventricle, structures inside the cavity
    lv_radius_mm: tuple[float, float] = (14.0, 31.0)
    lv_axis_ratio: tuple[float, float] = (0.8, 1.0)
    harmonic_amplitude: float = 0.02
    wall_thickness_mm: tuple[float, float] = (5.5, 10.5)
    wall_variation: tuple[float, float] = (0.0, 0.25)
    rv_angle_deg: tuple[float, float] = (0.0, 360.0)
    rv_half_span_deg: tuple[float, float] = (60.0, 95.0)
    rv_depth_mm: tuple[float, float] = (12.0, 30.0)
    rv_asymmetry: tuple[float, float] = (-0.2, 0.2)
    rv_wall_mm: tuple[float, float] = (2.0, 3.5)
    n_papillary: tuple[int, int] = (0, 2)
    n_trabeculae: tuple[int, int] = (0, 6)
    n_vessels: tuple[int, int] = (0, 8)
    center_jitter_mm: float = 5.0
    # end-systolic motion
    cavity_shrink: tuple[float, float] = (0.3, 0.6)
    myo_area_gain: tuple[float, float] = (1.0, 1.15)
    rv_shrink: tuple[float, float] = (0.25, 0.5)
    twist_deg: tuple[float, float] = (-6.0, 6.0)
    shift_mm: float = 3.0
    # appearance: intensities, background, fat, texture, acquisition
    blood_scale: tuple[float, float] = (0.9, 1.05)
    myo_scale: tuple[float, float] = (0.85, 1.15)
    rv_blood_ratio: tuple[float, float] = (0.85, 1.0)
    background_contrast: tuple[float, float] = (0.8, 1.2)
    texture_slope_jitter: float = 0.3
    texture_amplitude: tuple[float, float] = (0.05, 0.2)
    n_background_regions: tuple[int, int] = (3, 7)
    fat_line_fraction: tuple[float, float] = (0.0, 0.35)
    fat_rim_mm: tuple[float, float] = (1.5, 4.0)
    fat_rim_span_deg: tuple[float, float] = (0.0, 240.0)
    tissue_modulation: tuple[float, float] = (0.02, 0.08)
    bias_amplitude: tuple[float, float] = (0.0, 0.2)
    psf_sigma_px: tuple[float, float] = (0.4, 0.9)
    noise_scale: tuple[float, float] = (0.2, 0.6)


def _draw_layout(rng: np.random.Generator, r: PhantomRanges, size: tuple[int, int], spacing_mm: float) -> tuple:
    """The first draws of :func:`sample_phantom_params` (in this order): LV size, RV, centre, muscle, vessels, shift."""

    def u(lo_hi: tuple[float, float]) -> float:
        return float(rng.uniform(*lo_hi))

    lv_radius, thickness = u(r.lv_radius_mm), u(r.wall_thickness_mm)
    rv_angle, rv_depth = u(r.rv_angle_deg) % 360.0, u(r.rv_depth_mm)
    # put the heart (LV + RV), not the LV, near the image centre, like a crop around the label centroid
    away = -0.3 * (lv_radius + thickness + 0.5 * rv_depth)
    direction = np.array([np.cos(np.radians(rv_angle)), np.sin(np.radians(rv_angle))])
    centre = away * direction + rng.uniform(-r.center_jitter_mm, r.center_jitter_mm, 2)
    n_pap = int(rng.integers(r.n_papillary[0], r.n_papillary[1] + 1))
    papillary = tuple(
        (float(rng.uniform(0, 360)), float(rng.uniform(0.55, 0.7)), float(rng.uniform(2.5, 4.5))) for _ in range(n_pap)
    ) + tuple(  # trabeculae: small muscle specks next to the endocardium
        (float(rng.uniform(0, 360)), float(rng.uniform(0.8, 0.95)), float(rng.uniform(1.0, 2.0)))
        for _ in range(int(rng.integers(r.n_trabeculae[0], r.n_trabeculae[1] + 1)))
    )
    half_fov = 0.5 * np.asarray(size) * spacing_mm
    vessels = tuple(
        (float(rng.uniform(-half_fov[0], half_fov[0])), float(rng.uniform(-half_fov[1], half_fov[1])),
         float(rng.uniform(1.5, 4.0)))
        for _ in range(int(rng.integers(r.n_vessels[0], r.n_vessels[1] + 1)))
    )  # fmt: skip
    shift_angle = rng.uniform(0, 2 * np.pi)
    shift = float(rng.uniform(0, r.shift_mm)) * np.array([np.cos(shift_angle), np.sin(shift_angle)])
    return lv_radius, thickness, rv_angle, rv_depth, centre, papillary, vessels, shift


def sample_phantom_params(
    rng: np.random.Generator | int,
    stats: dict[str, Any],
    size: tuple[int, int] = (112, 112),
    spacing_mm: float = 1.5,
    ranges: PhantomRanges | None = None,
) -> CardiacPhantomParams:
    """Draw one subject's parameters (deterministic for a given seed / generator state).

    Args:
        rng: numpy ``Generator`` or an int seed.
        stats: statistics table from :func:`common.data.cardiac.stats.load_cardiac_stats`.
        size: image size in pixels.
        spacing_mm: pixel size in mm.
        ranges: sampling ranges (defaults: :class:`PhantomRanges`).
    """
    rng = np.random.default_rng(rng)
    r = ranges or PhantomRanges()

    def u(lo_hi: tuple[float, float]) -> float:
        return float(rng.uniform(*lo_hi))

    lv_radius, thickness, rv_angle, rv_depth, centre, papillary, vessels, shift = _draw_layout(rng, r, size, spacing_mm)
    row = int(rng.integers(len(stats["rows"])))
    row_stats = stats["rows"][row]
    return CardiacPhantomParams(
        size=(int(size[0]), int(size[1])),
        spacing_mm=float(spacing_mm),
        lv_center_mm=(float(centre[0]), float(centre[1])),
        lv_radius_mm=lv_radius,
        lv_axis_ratio=u(r.lv_axis_ratio),
        lv_angle_deg=float(rng.uniform(0, 180)),
        lv_harmonics=tuple(float(x) for x in rng.uniform(-r.harmonic_amplitude, r.harmonic_amplitude, 6)),
        wall_thickness_mm=thickness,
        wall_variation=u(r.wall_variation),
        wall_variation_angle_deg=float(rng.uniform(0, 360)),
        rv_angle_deg=rv_angle,
        rv_half_span_deg=u(r.rv_half_span_deg),
        rv_depth_mm=rv_depth,
        rv_asymmetry=u(r.rv_asymmetry),
        rv_wall_mm=u(r.rv_wall_mm),
        papillary=papillary,
        vessels=vessels,
        cavity_shrink=u(r.cavity_shrink),
        myo_area_gain=u(r.myo_area_gain),
        rv_shrink=u(r.rv_shrink),
        twist_deg=u(r.twist_deg),
        shift_mm=(float(shift[0]), float(shift[1])),
        stats_row=row,
        blood_scale=u(r.blood_scale),
        myo_scale=u(r.myo_scale),
        rv_blood_ratio=u(r.rv_blood_ratio),
        background_contrast=u(r.background_contrast),
        texture_slope=float(row_stats["psd_slope"]) + u((-r.texture_slope_jitter, r.texture_slope_jitter)),
        texture_amplitude=u(r.texture_amplitude),
        n_background_regions=int(rng.integers(r.n_background_regions[0], r.n_background_regions[1] + 1)),
        fat_line_fraction=u(r.fat_line_fraction),
        fat_rim_mm=u(r.fat_rim_mm),
        fat_rim_span_deg=u(r.fat_rim_span_deg),
        fat_rim_angle_deg=float(rng.uniform(0, 360)),
        tissue_modulation=u(r.tissue_modulation),
        bias_amplitude=u(r.bias_amplitude),
        psf_sigma_px=u(r.psf_sigma_px),
        noise_sigma=max(float(row_stats["noise_sigma"]), 0.01) * u(r.noise_scale),
        texture_seed=int(rng.integers(2**31 - 1)),
    )
