"""Synthetic ED/ES short-axis phantom: geometry, physiology, exact labels, determinism, statistics."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from common.blocks.warp import warp
from common.data.cardiac import (
    CardiacPhantomParams,
    compute_bssfp_stats,
    gaussian_random_field,
    load_cardiac_stats,
    phantom_geometry,
    render_cardiac_phantom,
    sample_phantom_params,
)

SEEDS = list(range(12))


@pytest.fixture(scope="module")
def stats() -> dict:
    return load_cardiac_stats()


@pytest.fixture(scope="module")
def batch(stats: dict) -> list[tuple[CardiacPhantomParams, dict]]:
    out = []
    for seed in SEEDS:
        params = sample_phantom_params(seed, stats)
        out.append((params, render_cardiac_phantom(params, stats, with_ddf=True)))
    return out


def _touches(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether any pixel of mask a is 4-adjacent to a pixel of mask b."""
    return bool((ndi.binary_dilation(a) & b).any())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_shipped_stats_are_sane(stats: dict) -> None:
    assert len(stats["rows"]) >= 40 and "MyoPS" in stats["source"]
    for row in stats["rows"]:
        assert np.median(row["blood"]) > np.median(row["myocardium"]) + 0.2  # bright blood, dark muscle
        assert np.all(np.diff(row["background"]) >= 0)


def test_outputs_and_ranges(batch: list) -> None:
    for _, out in batch:
        for key in ("ed_image", "es_image"):
            img = out[key]
            assert img.shape == (112, 112) and img.dtype == np.float32
            assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
        for key in ("ed_label", "es_label"):
            assert out[key].dtype == np.uint8 and set(np.unique(out[key])) == {0, 1, 2, 3}
        assert out["ddf"].shape == (2, 112, 112)


def test_contraction_every_sample(batch: list) -> None:
    """LV cavity shrinks by about cavity_shrink, wall thickens, RV shrinks, in every sample."""
    for params, out in batch:
        ed, es = out["ed_label"], out["es_label"]
        lv_ed, lv_es = (ed == 3).sum(), (es == 3).sum()
        assert lv_es < lv_ed
        assert lv_es / lv_ed == pytest.approx(1 - params.cavity_shrink, abs=0.06)
        assert (es == 1).sum() < (ed == 1).sum()
        # mean wall thickness = myocardial area / mid-wall circumference
        thickness = []
        for lab in (ed, es):
            endo, epi = np.sqrt((lab == 3).sum() / np.pi), np.sqrt(((lab == 3) | (lab == 2)).sum() / np.pi)
            thickness.append(epi - endo)
        assert thickness[1] > thickness[0]


def test_myocardium_ring_closed(batch: list) -> None:
    """The cavity touches only myocardium; the ring separates it from RV, background and the border."""
    for _, out in batch:
        for lab in (out["ed_label"], out["es_label"]):
            lv, myo = lab == 3, lab == 2
            assert not _touches(lv, lab == 0) and not _touches(lv, lab == 1)
            assert _touches(lab == 1, myo)  # RV attached to the septum
            comps, _ = ndi.label(~myo)
            inside = set(np.unique(comps[lv]))
            border = set(np.unique(np.concatenate([comps[0], comps[-1], comps[:, 0], comps[:, -1]])))
            assert len(inside) == 1 and not inside & border
            eight = np.ones((3, 3))  # thin crescent tips may touch diagonally only
            assert ndi.label(myo)[1] == 1 and ndi.label(lab == 1, structure=eight)[1] == 1


@pytest.mark.parametrize("seed", [0, 5])
def test_labels_are_what_is_rendered(stats: dict, seed: int) -> None:
    """Without blur, noise, texture and papillary muscles, the image is constant on each label."""
    params = dataclasses.replace(
        sample_phantom_params(seed, stats),
        papillary=(),
        psf_sigma_px=0.0,
        noise_sigma=0.0,
        tissue_modulation=0.0,
        bias_amplitude=0.0,
        rv_wall_mm=0.0,
    )
    out = render_cardiac_phantom(params, stats, supersample=1)
    for frame in ("ed", "es"):
        img, lab = out[f"{frame}_image"], out[f"{frame}_label"]
        means = []
        for k in (1, 2, 3):
            values = img[lab == k]
            assert values.std() < 1e-5, f"label {k} of {frame} is not painted uniformly"
            means.append(values.mean())
        assert means[2] > means[1] and means[0] > means[1]  # blood brighter than muscle


def test_labels_independent_of_supersampling(batch: list) -> None:
    """Labels are the pixel-centre samples of the geometry, whatever the rendering resolution."""
    for params, out in batch[:4]:
        native = phantom_geometry(params, supersample=1)
        np.testing.assert_array_equal(native["ed_label"], out["ed_label"])
        np.testing.assert_array_equal(native["es_label"], out["es_label"])
        fine = phantom_geometry(params, supersample=3)
        np.testing.assert_allclose(fine["ed_fractions"].sum(0), 1.0, atol=1e-5)


def test_tissue_contrast(batch: list) -> None:
    for _, out in batch:
        for frame in ("ed", "es"):
            img, lab = out[f"{frame}_image"], ndi.binary_erosion(out[f"{frame}_label"] == 3)
            myo = out[f"{frame}_label"] == 2
            assert np.median(img[lab]) > np.median(img[myo]) + 0.15


def test_ddf_maps_es_onto_ed(batch: list) -> None:
    """The returned displacement carries the ED labels onto the ES labels (pull-back, voxels)."""
    for _, out in batch[:6]:
        ed = torch.from_numpy(out["ed_label"].astype(np.float32))[None, None]
        warped = warp(ed, torch.from_numpy(out["ddf"])[None], mode="nearest")[0, 0].numpy().round()
        for k in (1, 2, 3):
            moved = _dice(warped == k, out["es_label"] == k)
            still = _dice(out["ed_label"] == k, out["es_label"] == k)
            assert moved > 0.9 and moved > still


def test_deterministic(stats: dict) -> None:
    a = render_cardiac_phantom(sample_phantom_params(7, stats), stats)
    b = render_cardiac_phantom(sample_phantom_params(np.random.default_rng(7), stats), stats)
    c = render_cardiac_phantom(sample_phantom_params(8, stats), stats)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["ed_image"], c["ed_image"])


def test_params_round_trip(stats: dict) -> None:
    params = sample_phantom_params(3, stats)
    again = CardiacPhantomParams.from_dict(json.loads(json.dumps(params.to_dict())))
    assert again == params
    with pytest.raises(ValueError, match=r"unknown keys \['lv_volume'\]"):
        CardiacPhantomParams.from_dict({"lv_volume": 3})


@pytest.mark.parametrize(
    "change, match",
    [
        ({"cavity_shrink": 1.2}, "cavity_shrink"),
        ({"lv_axis_ratio": 0.0}, "lv_axis_ratio"),
        ({"wall_thickness_mm": -1.0}, "wall_thickness_mm"),
        ({"lv_harmonics": (0.1,) * 3}, "lv_harmonics"),
        ({"size": (4, 4)}, "size"),
    ],
)
def test_bad_params(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=f"phantom_geometry: parameters out of range.*{match}"):
        phantom_geometry(dataclasses.replace(CardiacPhantomParams(), **change))


def test_bad_render_options(stats: dict) -> None:
    with pytest.raises(ValueError, match="stats_row=99 is not a row"):
        render_cardiac_phantom(CardiacPhantomParams(stats_row=99), stats)
    with pytest.raises(ValueError, match="supersample must be a positive odd integer, got 2"):
        phantom_geometry(CardiacPhantomParams(), supersample=2)


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "cannot read statistics"),
        ("{not json", "cannot read statistics"),
        ('{"quantile_levels": [0.5], "rows": []}', "needs non-empty"),
        ('{"quantile_levels": [0.5], "rows": [{"blood": [1]}]}', "row 0 lacks"),
    ],
)
def test_bad_stats_file(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "stats.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=f"load_cardiac_stats: {path}: {match}"):
        load_cardiac_stats(path)


@pytest.mark.parametrize("slope", [2.0, 4.0])
def test_gaussian_random_field(slope: float) -> None:
    field = gaussian_random_field((64, 64), slope, np.random.default_rng(0))
    assert field.mean() == pytest.approx(0.0, abs=1e-5) and field.std() == pytest.approx(1.0, abs=1e-4)
    rough = gaussian_random_field((64, 64), slope - 1.5, np.random.default_rng(0))
    assert np.abs(np.diff(field, axis=0)).mean() < np.abs(np.diff(rough, axis=0)).mean()


def test_compute_stats_on_a_rendered_stack(tmp_path: Path, stats: dict) -> None:
    """The blood-pool finder recovers a known LV area and the blood/muscle order on a phantom stack."""
    params = dataclasses.replace(
        sample_phantom_params(2, stats),
        size=(224, 224),
        spacing_mm=0.75,
        papillary=(),
        lv_center_mm=(0.0, 0.0),
    )
    out = render_cardiac_phantom(params, stats)
    stack = np.stack([out["ed_image"], out["ed_image"]], axis=-1)
    nib.save(
        nib.Nifti1Image((stack * 255).astype(np.uint8), np.diag([0.75, 0.75, 10.0, 1.0])),
        str(tmp_path / "a.nii.gz"),
    )
    table = compute_bssfp_stats(tmp_path)
    (row,) = table["rows"]
    assert row["lv_area_mm2"] == pytest.approx((out["ed_label"] == 3).sum() * 0.75**2, rel=0.15)
    assert np.median(row["blood"]) > np.median(row["myocardium"]) + 0.2
    with pytest.raises(ValueError, match="no NIfTI files"):
        compute_bssfp_stats(tmp_path / "empty")
