"""QC figure: a PNG for 2D and 3D pairs, input checks, atomic writes."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import torch
from io_geometry import smooth_field
from matplotlib.figure import Figure

from common.blocks import warp
from common.io import save_qc_figure


def demo_pair(shape, amplitude: float = 1.5):
    grids = np.meshgrid(*[np.linspace(0, 3, n) for n in shape], indexing="ij")
    fixed = np.sin(2 * grids[0]) + np.cos(3 * grids[1])
    moving = np.sin(2 * grids[0] + 0.4) + np.cos(3 * grids[1])
    ddf = smooth_field(shape, amplitude=amplitude).float()
    warped = warp(torch.tensor(moving, dtype=torch.float32)[None, None], ddf)
    return fixed, moving, warped, ddf


@pytest.mark.parametrize("shape, rows", [((24, 20), 1), ((16, 18, 14), 3)])
def test_png_has_one_row_per_view(tmp_path, shape, rows):
    fixed, moving, warped, ddf = demo_pair(shape)
    path = save_qc_figure(fixed, moving, warped, ddf, tmp_path / "qc.png", title="pair 1")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    # 7 columns of ~2.3 in, 2.4 in per row (+0.6 in for titles) at 100 dpi
    assert width == pytest.approx(7 * 230, abs=2)
    assert height == pytest.approx(rows * 240 + 60, abs=2)


def test_extra_column_metrics_and_torch_batched_inputs(tmp_path):
    fixed, moving, warped, ddf = demo_pair((12, 14, 10))
    uncertainty = torch.rand(1, 1, 12, 14, 10)
    path = save_qc_figure(
        torch.tensor(fixed)[None, None],
        torch.tensor(moving)[None],
        warped,
        ddf[0],
        tmp_path / "qc.png",
        extra=uncertainty,
        metrics={"NCC before": 0.61, "NCC after": 0.83},
        extra_label="std",
    )
    width = matplotlib.image.imread(str(path)).shape[1]
    assert width == pytest.approx(8 * 230, abs=2)


def test_folding_changes_the_figure(tmp_path):
    fixed, moving, warped, ddf = demo_pair((20, 22))
    folded = ddf.clone()
    folded[:, 0, 8:12] = -4.0 * torch.linspace(-1, 1, 4).view(4, 1)  # a compressive flip along axis 0
    a = save_qc_figure(fixed, moving, warped, ddf, tmp_path / "a.png")
    b = save_qc_figure(fixed, moving, warped, folded, tmp_path / "b.png")
    assert not np.array_equal(matplotlib.image.imread(str(a)), matplotlib.image.imread(str(b)))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda f, m, w, d: (f, m, w, d[:, :2, ..., 0]), "ddf.*2D field.*fixed.*3D"),  # 2D field, 3D images
        (lambda f, m, w, d: (f, m, w, torch.cat([d, d[:, :1]], 1)), "ddf.*4 channels"),
        (lambda f, m, w, d: (f, m, w, d[..., :-1]), "ddf.*shape"),
        (lambda f, m, w, d: (f, np.where(m > 0, np.nan, m), w, d), "moving.*NaN"),
        (lambda f, m, w, d: (f, m, w[..., :-1], d), "warped.*shape"),
        (lambda f, m, w, d: (f, m, w, torch.full_like(d, float("nan"))), "ddf.*NaN"),
        (lambda f, m, w, d: (np.stack([f, f]), m, w, d), "fixed.*2D or 3D"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(tmp_path, change, match):
    args = change(*demo_pair((8, 9, 7)))
    with pytest.raises(ValueError, match=match):
        save_qc_figure(*args, tmp_path / "qc.png")
    assert list(tmp_path.iterdir()) == []


def test_rejects_non_png_path(tmp_path):
    with pytest.raises(ValueError, match="path"):
        save_qc_figure(*demo_pair((8, 9)), tmp_path / "qc.jpg")


def test_failed_save_leaves_no_temp_file(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(OSError, match="disk full"):
        save_qc_figure(*demo_pair((8, 9)), tmp_path / "qc.png")
    assert list(tmp_path.iterdir()) == []


def test_half_precision_field_gives_the_figure_of_its_float32_values(tmp_path):
    fixed, moving, warped, ddf = demo_pair((20, 22))
    half = ddf.to(torch.bfloat16)  # e.g. a field from a network run under bf16 autocast
    a = save_qc_figure(fixed, moving, warped, half, tmp_path / "a.png")
    b = save_qc_figure(fixed, moving, warped, half.float(), tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
