"""Synthetic 2D short-axis cardiac phantom: parameters and exact ED/ES label geometry.

Default grid: 112 x 112 pixels of 1.5 mm (as the ACDC slices of Hering et al. 2019); positions
(``lv_center_mm``, ``shift_mm``, ``vessels``) are in mm from the image centre in array order (axis 0,
axis 1), angles are measured from axis 0 towards axis 1. Random parameters come from
:mod:`common.data.cardiac.sampling`, images from :mod:`common.data.cardiac.render`.

The heart is described in polar coordinates around the LV centre, as functions of the *material angle*
``theta`` (the end-diastolic angle of a piece of tissue):

* LV cavity (label 3): ``rho < r_endo(theta)``, an ellipse of mean radius ``lv_radius_mm`` (area
  ``pi * lv_radius_mm**2``), minor/major axis ratio ``lv_axis_ratio``, orientation ``lv_angle_deg``, plus
  small Fourier harmonics ``lv_harmonics`` (relative amplitudes for cos/sin of orders 2, 3, 4);
* myocardium (label 2): ``r_endo <= rho < r_epi = r_endo + t(theta)``, a closed ring of thickness
  ``t = wall_thickness_mm * (1 + wall_variation * cos(theta - wall_variation_angle_deg))``;
* RV cavity (label 1): a crescent attached to the septum, ``r_epi <= rho < r_epi + d(theta)`` with
  ``d = rv_depth_mm * (1 + rv_asymmetry * u) * sqrt(1 - u**2)``, ``u = (theta - rv_angle_deg) /
  rv_half_span_deg`` (zero outside ``|u| < 1``); its free wall (``rv_wall_mm`` thick, tapering to zero at
  the insertion points) is drawn with muscle intensity but labelled 0, like in ACDC;
* papillary muscles and trabeculae: discs inside the cavity (``papillary``: angle, radius relative to
  the endocardium, disc radius in mm; 15 % larger at ES), labelled 3 but drawn with muscle intensity, as
  in ACDC where the cavity label includes them.

End systole is the same tissue contracted: the cavity area shrinks by ``cavity_shrink`` (radius times
``sqrt(1 - cavity_shrink)`` at every angle), each angular sector of the myocardium keeps its area times
``myo_area_gain`` (``r_epi_es**2 = r_endo_es**2 + myo_area_gain * (r_epi_ed**2 - r_endo_ed**2)``, so the
wall thickens), the RV depth shrinks by ``rv_shrink``, the RV wall thickens by 15 %, and the whole
heart twists by ``twist_deg`` and shifts by ``shift_mm``. Because ED and ES come from one parametrised
geometry, the piecewise-radial map between them is known in closed form: :func:`phantom_geometry`
returns it as a displacement field (convention of :mod:`common.conventions`: on the ES grid, voxels,
array order, pull-back ``ES(x) ~ ED(x + ddf(x))``), blended smoothly to zero outside the heart
(decay length ``surround_decay_mm``, lengthened to twice the boundary's motion where needed so that the
map never folds).

Labels are point samples of this geometry at the pixel centres: exact, with no interpolation. The
images (:mod:`common.data.cardiac.render`) are rendered from the same label maps sampled on a 3 x 3
sub-pixel grid whose centre sub-pixels *are* the returned labels, i.e. with partial-volume edges.

Limits: one slice, no through-plane motion (apical/basal slices change shape only by the in-plane
contraction); the RV is a crescent (no outflow tract); no atria or great vessels in the heart (bright
vessel cross-sections only in the surroundings); the ES geometry is
a deterministic function of the ED one, so strain patterns are smooth (no regional dyskinesia).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["N_TISSUES", "TISSUE_PAPILLARY", "TISSUE_RV_WALL", "CardiacPhantomParams", "phantom_geometry"]

TISSUE_RV_WALL = 4
TISSUE_PAPILLARY = 5
N_TISSUES = 6


@dataclass(frozen=True)
class CardiacPhantomParams:
    """All parameters of one phantom subject (lengths in mm, angles in degrees, image grid in pixels).

    Geometry fields are documented in the module docstring. Appearance fields: ``stats_row`` (row of the
    bSSFP statistics table giving blood, muscle and background levels), ``blood_scale`` /
    ``myo_scale`` (multipliers on that row's medians), ``rv_blood_ratio`` (RV / LV blood brightness),
    ``background_contrast`` (stretch of the background quantiles about their median),
    ``n_background_regions`` (random "organ" regions of the surroundings), ``vessels`` (bright discs in
    the surroundings, position relative to the image centre in mm and radius; those within 2 mm of the
    heart are skipped), ``fat_line_fraction`` (share
    of region boundaries drawn as bright fat planes), ``fat_rim_mm`` / ``fat_rim_span_deg`` /
    ``fat_rim_angle_deg`` (bright epicardial fat band outside the heart: width, angular extent, centre),
    ``texture_slope`` / ``texture_amplitude`` (power-spectrum slope beta and relative amplitude of the
    fine background texture), ``tissue_modulation`` (relative amplitude of
    smooth intensity variation inside tissues), ``bias_amplitude`` (relative smooth multiplicative
    field), ``psf_sigma_px`` (Gaussian blur, pixels), ``noise_sigma`` (Rician noise, normalised units),
    ``texture_seed`` (seed of the random fields and noise).
    """

    size: tuple[int, int] = (112, 112)
    spacing_mm: float = 1.5
    lv_center_mm: tuple[float, float] = (0.0, 0.0)
    lv_radius_mm: float = 22.0
    lv_axis_ratio: float = 0.9
    lv_angle_deg: float = 0.0
    lv_harmonics: tuple[float, ...] = (0.0,) * 6
    wall_thickness_mm: float = 8.0
    wall_variation: float = 0.1
    wall_variation_angle_deg: float = 0.0
    rv_angle_deg: float = 150.0
    rv_half_span_deg: float = 70.0
    rv_depth_mm: float = 16.0
    rv_asymmetry: float = 0.0
    rv_wall_mm: float = 2.5
    papillary: tuple[tuple[float, float, float], ...] = ()  # (angle_deg, relative radius, radius_mm)
    vessels: tuple[tuple[float, float, float], ...] = ()  # (x0_mm, x1_mm, radius_mm), outside the heart
    cavity_shrink: float = 0.45
    myo_area_gain: float = 1.05
    rv_shrink: float = 0.4
    twist_deg: float = 0.0
    shift_mm: tuple[float, float] = (0.0, 0.0)
    surround_decay_mm: float = 15.0
    stats_row: int = 0
    blood_scale: float = 1.0
    myo_scale: float = 1.0
    rv_blood_ratio: float = 0.95
    background_contrast: float = 1.0
    texture_slope: float = 2.9
    texture_amplitude: float = 0.06
    n_background_regions: int = 6
    fat_line_fraction: float = 0.3
    fat_rim_mm: float = 2.0
    fat_rim_span_deg: float = 120.0
    fat_rim_angle_deg: float = 0.0
    tissue_modulation: float = 0.05
    bias_amplitude: float = 0.1
    psf_sigma_px: float = 0.6
    noise_sigma: float = 0.025
    texture_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CardiacPhantomParams:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"CardiacPhantomParams.from_dict: unknown keys {unknown}.")
        conv = {}
        for k, v in d.items():
            if k in ("papillary", "vessels"):
                v = tuple(tuple(float(x) for x in p) for p in v)
            elif isinstance(v, list):
                v = tuple(v)
            conv[k] = v
        return cls(**conv)


def _check(p: CardiacPhantomParams) -> None:
    checks = {
        "size": len(p.size) == 2 and min(p.size) >= 8,
        "spacing_mm": p.spacing_mm > 0,
        "lv_radius_mm": p.lv_radius_mm > 0,
        "lv_axis_ratio": 0.2 <= p.lv_axis_ratio <= 1.0,
        "lv_harmonics": len(p.lv_harmonics) == 6 and sum(abs(h) for h in p.lv_harmonics) < 0.5,
        "wall_thickness_mm": p.wall_thickness_mm > 0,
        "wall_variation": 0 <= p.wall_variation < 1,
        "rv_half_span_deg": 0 < p.rv_half_span_deg < 180,
        "rv_depth_mm": p.rv_depth_mm >= 0,
        "rv_asymmetry": abs(p.rv_asymmetry) < 1,
        "rv_wall_mm": p.rv_wall_mm >= 0,
        "cavity_shrink": 0 <= p.cavity_shrink < 1,
        "myo_area_gain": p.myo_area_gain > 0,
        "rv_shrink": 0 <= p.rv_shrink < 1,
        "surround_decay_mm": p.surround_decay_mm > 0,
        "n_background_regions": p.n_background_regions >= 1,
        "fat_rim_mm": p.fat_rim_mm >= 0,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        values = {k: getattr(p, k) for k in bad}
        raise ValueError(f"phantom_geometry: parameters out of range: {values} (see CardiacPhantomParams).")


def _radii(p: CardiacPhantomParams, theta: np.ndarray, frame: str) -> dict[str, np.ndarray]:
    """Boundary radii (mm) at material angles ``theta`` (rad) for frame 'ED' or 'ES'."""
    q = p.lv_axis_ratio
    a, b = p.lv_radius_mm / np.sqrt(q), p.lv_radius_mm * np.sqrt(q)
    t = theta - np.radians(p.lv_angle_deg)
    endo = a * b / np.sqrt((b * np.cos(t)) ** 2 + (a * np.sin(t)) ** 2)
    h = p.lv_harmonics
    endo = endo * (
        1 + sum(h[2 * k] * np.cos((k + 2) * theta) + h[2 * k + 1] * np.sin((k + 2) * theta) for k in range(3))
    )
    wall = p.wall_thickness_mm * (1 + p.wall_variation * np.cos(theta - np.radians(p.wall_variation_angle_deg)))
    epi = endo + wall
    du = np.angle(np.exp(1j * (theta - np.radians(p.rv_angle_deg)))) / np.radians(p.rv_half_span_deg)
    inside = np.clip(1 - du**2, 0, None)
    depth = p.rv_depth_mm * (1 + p.rv_asymmetry * du) * np.sqrt(inside)
    rv_wall = p.rv_wall_mm * inside**0.25
    if frame == "ES":
        endo_es = np.sqrt(1 - p.cavity_shrink) * endo
        epi = np.sqrt(endo_es**2 + p.myo_area_gain * (epi**2 - endo**2))
        endo, depth, rv_wall = endo_es, (1 - p.rv_shrink) * depth, 1.15 * rv_wall
    return {"endo": endo, "epi": epi, "rv": epi + depth, "out": epi + depth + rv_wall}


_TABLE_SIZE = 4096


def _radii_at(p: CardiacPhantomParams, theta: np.ndarray, frame: str) -> dict[str, np.ndarray]:
    """:func:`_radii` through a periodic lookup table of 4096 angles (linear interpolation, < 1e-3 mm off).

    The table *is* the geometry: labels, tissue fractions and the ES->ED map all use it.
    """
    table = _radii(p, np.linspace(-np.pi, np.pi, _TABLE_SIZE, endpoint=False), frame)
    pos = np.mod((np.asarray(theta) + np.pi) * (_TABLE_SIZE / (2 * np.pi)), _TABLE_SIZE)
    i0 = np.minimum(pos.astype(np.int64), _TABLE_SIZE - 1)
    i1 = (i0 + 1) % _TABLE_SIZE
    w = pos - i0
    return {k: v[i0] * (1.0 - w) + v[i1] * w for k, v in table.items()}


def _frame_pose(p: CardiacPhantomParams, frame: str) -> tuple[np.ndarray, float]:
    centre = np.asarray(p.lv_center_mm, dtype=np.float64)
    if frame == "ES":
        return centre + np.asarray(p.shift_mm, dtype=np.float64), np.radians(p.twist_deg)
    return centre, 0.0


def _grid_mm(p: CardiacPhantomParams, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (mm, image centre = 0); with ``supersample`` k, a k x k sub-pixel grid
    whose centre sub-pixels (odd k) coincide with the native pixel centres."""
    axes = []
    for n in p.size:
        idx = (np.arange(n * supersample) + 0.5) / supersample - 0.5
        axes.append((idx - (n - 1) / 2.0) * p.spacing_mm)
    return np.meshgrid(*axes, indexing="ij")


def _frame_maps(p: CardiacPhantomParams, frame: str, supersample: int = 1) -> dict[str, np.ndarray]:
    """Label map, tissue map and polar coordinates of one frame (on the super-sampled grid)."""
    x0, x1 = _grid_mm(p, supersample)
    centre, twist = _frame_pose(p, frame)
    d0, d1 = x0 - centre[0], x1 - centre[1]
    rho, theta = np.hypot(d0, d1), np.arctan2(d1, d0) - twist
    r = _radii_at(p, theta, frame)
    label = np.zeros(x0.shape, dtype=np.uint8)
    tissue = np.zeros(x0.shape, dtype=np.uint8)
    tissue[rho < r["out"]] = TISSUE_RV_WALL
    label[rho < r["rv"]] = 1
    label[rho < r["epi"]] = 2
    label[rho < r["endo"]] = 3
    tissue[label > 0] = label[label > 0]
    for angle, rel, radius in p.papillary:
        a = np.radians(angle)
        rr = rel * _radii(p, np.array([a]), frame)["endo"][0]
        scale = 1.15 if frame == "ES" else 1.0
        pc = centre + rr * np.array([np.cos(a + twist), np.sin(a + twist)])
        tissue[(np.hypot(x0 - pc[0], x1 - pc[1]) < radius * scale) & (label == 3)] = TISSUE_PAPILLARY
    return {"label": label, "tissue": tissue, "rho": rho, "theta": theta, "radii": r}


def _fractions(tissue: np.ndarray, k: int) -> np.ndarray:
    """(N_TISSUES, H, W) area fraction of each tissue class in each native pixel (k x k blocks)."""
    h, w = tissue.shape[0] // k, tissue.shape[1] // k
    onehot = np.eye(N_TISSUES, dtype=np.float32)[tissue]  # (H*k, W*k, T)
    return onehot.reshape(h, k, w, k, N_TISSUES).mean(axis=(1, 3)).transpose(2, 0, 1)


def _es_to_ed_ddf(p: CardiacPhantomParams, es: dict[str, np.ndarray]) -> np.ndarray:
    """Piecewise-radial map ES -> ED as a displacement (voxels, array order) on the ES grid."""
    rho, theta, r_es = es["rho"], es["theta"], es["radii"]
    r_ed = _radii_at(p, theta, "ED")
    eps = 1e-6
    out = rho + (r_ed["out"] - r_es["out"])
    rv_wall = r_ed["rv"] + (rho - r_es["rv"]) * (r_ed["out"] - r_ed["rv"]) / np.maximum(r_es["out"] - r_es["rv"], eps)
    rv = r_ed["epi"] + (rho - r_es["epi"]) * (r_ed["rv"] - r_ed["epi"]) / np.maximum(r_es["rv"] - r_es["epi"], eps)
    myo = np.sqrt(np.maximum(r_ed["endo"] ** 2 + (rho**2 - r_es["endo"] ** 2) / p.myo_area_gain, 0.0))
    cavity = rho * r_ed["endo"] / r_es["endo"]
    src_rho = np.select(
        [rho < r_es["endo"], rho < r_es["epi"], rho < r_es["rv"], rho < r_es["out"]],
        [cavity, myo, rv, rv_wall],
        out,
    )
    x0, x1 = _grid_mm(p)
    c_ed, _ = _frame_pose(p, "ED")
    s0, s1 = c_ed[0] + src_rho * np.cos(theta), c_ed[1] + src_rho * np.sin(theta)
    # one decay length >= 2 max|jump| keeps the radial map rho -> rho + jump * exp(-(rho - R) / decay)
    # monotonic; one value per subject (not per angle) avoids streaks far from the heart
    decay = max(p.surround_decay_mm, 2.0 * float(np.abs(r_ed["out"] - r_es["out"]).max()))
    alpha = np.exp(-np.maximum(rho - r_es["out"], 0.0) / decay)
    ddf = np.stack([alpha * (s0 - x0), alpha * (s1 - x1)]) / p.spacing_mm
    return ddf.astype(np.float32)


def phantom_geometry(p: CardiacPhantomParams, supersample: int = 3) -> dict[str, np.ndarray]:
    """Exact label maps of ED and ES, tissue area fractions for rendering, and the ES->ED displacement.

    Args:
        p: subject parameters.
        supersample: odd sub-sampling factor per axis for the tissue fractions (partial-volume rendering);
            the label maps are the centre sub-pixels, i.e. the geometry sampled at the pixel centres.

    Returns:
        ``ed_label``, ``es_label``: ``(H, W)`` uint8, 0 background, 1 RV cavity, 2 myocardium, 3 LV cavity;
        ``ed_fractions``, ``es_fractions``: ``(6, H, W)`` float32 area fraction per tissue class
        (0 surroundings, 1-3 as the labels, 4 RV free wall, 5 papillary muscle), summing to 1;
        ``ddf``: ``(2, H, W)`` float32, voxels, on the ES grid, ``ES(x) ~ ED(x + ddf(x))``;
        ``ed_outside_mm``: ED radial distance (mm) outside the heart's outer boundary (negative inside),
        ``ed_theta``: ED polar angle (rad) about the LV centre (both for painting the fat rim).

    Raises:
        ValueError: parameters out of range or an even/non-positive ``supersample``.
    """
    _check(p)
    if supersample < 1 or supersample % 2 == 0:
        raise ValueError(f"phantom_geometry: supersample must be a positive odd integer, got {supersample}.")
    c = (supersample - 1) // 2
    out: dict[str, np.ndarray] = {}
    for frame in ("ED", "ES"):
        fine = _frame_maps(p, frame, supersample)
        out[f"{frame.lower()}_label"] = np.ascontiguousarray(fine["label"][c::supersample, c::supersample])
        out[f"{frame.lower()}_fractions"] = _fractions(fine["tissue"], supersample)
    ed, es = _frame_maps(p, "ED"), _frame_maps(p, "ES")
    out["ddf"] = _es_to_ed_ddf(p, es)
    out["ed_outside_mm"] = (ed["rho"] - ed["radii"]["out"]).astype(np.float32)
    out["ed_theta"] = ed["theta"].astype(np.float32)
    return out
