"""Selectable outputs, their compression and the parallel writers (common.engines.outputs)."""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.engines import IdentityToDDF, LoadRegistrationPaird, SaveRegistrationOutputsd
from common.engines.outputs import OUTPUTS, parse_outputs

FULL = {"warped.nii.gz", "warped_label.nii.gz", "disp.nii.gz", "displacement_itk.nii.gz", "qc.png", "metrics.json"}


def _blob(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    return (np.sqrt(((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(0)) < radius).astype(np.float32)


@pytest.fixture
def pair(tmp_path) -> dict[str, str]:
    """A 24^3 pair (2 mm, LIA-like affine) with label maps; the moving blob is shifted by 2 voxels."""
    shape = (24, 24, 24)
    aff = np.array([[-2.0, 0, 0, 24], [0, 0, 2.0, -24], [0, -2.0, 0, 24], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    fixed = _blob(shape, (12, 12, 12), 6) + 0.5 * _blob(shape, (12, 12, 12), 9) + 0.05 * rng.random(shape)
    moving = _blob(shape, (14, 12, 11), 6) + 0.5 * _blob(shape, (14, 12, 11), 9) + 0.05 * rng.random(shape)
    paths = {}
    for name, arr, dtype in (
        ("fixed_image", fixed, np.float32),
        ("moving_image", moving, np.float32),
        ("fixed_label", (fixed > 1.0) * 2 + (fixed > 0.4) * 1, np.int16),
        ("moving_label", (moving > 1.0) * 2 + (moving > 0.4) * 1, np.int16),
    ):
        p = tmp_path / "in" / f"{name}.nii.gz"
        p.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(arr.astype(dtype), aff), str(p))
        paths[name] = str(p)
    return paths


def _item(paths: dict[str, str]) -> dict:
    item = LoadRegistrationPaird(spacing=(2.0,) * 3, axcodes=None, multiple=8)(dict(paths))
    ddf = torch.zeros(3, *item["fixed_image"].shape[1:])
    ddf[0] = 1.0  # a smooth, non-zero field: one voxel along the first axis
    ddf[1] = torch.linspace(-0.5, 0.5, ddf.shape[1]).view(-1, 1, 1)
    item["pred"] = ddf
    return item


def _run(paths, out, **kwargs) -> Path:
    item = _item(paths)
    SaveRegistrationOutputsd(IdentityToDDF(), str(out), overwrite=True, **kwargs)(item)
    return Path(item["registration"]["out_dir"])


def test_parse_outputs_accepts_all_lists_and_strings_and_names_the_valid_ones():
    assert parse_outputs(None) == parse_outputs("all") == tuple(OUTPUTS)
    assert parse_outputs("itk, warped") == ("warped", "itk")  # canonical order
    assert parse_outputs(["qc", "metrics"]) == ("qc", "metrics")
    with pytest.raises(ValueError, match="unknown output.*'wraped'.*warped, labels, l2r, itk"):
        parse_outputs("wraped,itk")
    with pytest.raises(ValueError, match="no output selected"):
        parse_outputs("")


def test_default_writes_every_output_and_a_selection_writes_only_what_was_asked(pair, tmp_path):
    full = _run(pair, tmp_path / "all")
    assert {p.name for p in full.iterdir()} == FULL
    record = json.loads((full / "metrics.json").read_text())
    assert {"ncc_before", "ncc_after", "sdlogj", "dice_before", "dice_after"} <= set(record["metrics"])
    assert set(record["timings"]["writers"]) == {"warped", "metrics", "labels", "l2r", "itk", "qc"}
    assert record["timings"]["read"] > 0 and record["timings"]["outputs"] > 0

    some = _run(pair, tmp_path / "some", outputs="warped,itk")
    assert {p.name for p in some.iterdir()} == {"warped.nii.gz", "displacement_itk.nii.gz", "metrics.json"}
    record = json.loads((some / "metrics.json").read_text())
    assert "ncc_after" not in record["metrics"] and "dice_after" not in record["metrics"]
    assert set(record["timings"]["writers"]) == {"warped", "itk"}
    assert set(record["outputs"]) == {"warped_image", "itk_displacement"}
    # the selected files are the same as in the full run
    for name in ("warped.nii.gz", "displacement_itk.nii.gz"):
        assert gzip.open(some / name).read() == gzip.open(full / name).read()

    # Dice without writing the label file
    dice_only = _run(pair, tmp_path / "dice", outputs=["metrics"])
    assert {p.name for p in dice_only.iterdir()} == {"metrics.json"}
    metrics = json.loads((dice_only / "metrics.json").read_text())["metrics"]
    assert metrics["dice_after"] == pytest.approx(record_dice(full))


def record_dice(folder: Path) -> float:
    return json.loads((folder / "metrics.json").read_text())["metrics"]["dice_after"]


def test_threads_and_compression_change_neither_content_nor_metrics(pair, tmp_path):
    serial = _run(pair, tmp_path / "serial", threads=1, compression=1)
    parallel = _run(pair, tmp_path / "parallel", threads=4)  # default compression: fields stored (level 0)
    for name in ("warped.nii.gz", "warped_label.nii.gz", "disp.nii.gz", "displacement_itk.nii.gz"):
        assert gzip.open(serial / name).read() == gzip.open(parallel / name).read(), name
    # level 0 stores the field: larger file, same content; level 1 compresses it
    raw = len(gzip.open(parallel / "disp.nii.gz").read())
    assert os.path.getsize(parallel / "disp.nii.gz") > raw > os.path.getsize(serial / "disp.nii.gz")
    m_serial = json.loads((serial / "metrics.json").read_text())["metrics"]
    m_parallel = json.loads((parallel / "metrics.json").read_text())["metrics"]
    for key in ("ncc_before", "ncc_after", "sdlogj", "percent_folding", "dice_before", "dice_after"):
        assert m_serial[key] == m_parallel[key], key
    with pytest.raises(ValueError, match="compression"):
        SaveRegistrationOutputsd(IdentityToDDF(), str(tmp_path / "x"), compression=12)


def test_relative_paths_survive_a_writer_that_changes_the_working_directory(pair, tmp_path, monkeypatch):
    """ITK's lazy module loader chdirs while it loads; the other writer threads must not follow it."""
    monkeypatch.chdir(tmp_path)
    rel = {k: os.path.relpath(v, tmp_path) for k, v in pair.items()}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lock = threading.Lock()

    def chdir_for_a_while(item, out, geo):
        with lock:
            old = os.getcwd()
            os.chdir(elsewhere)
            time.sleep(0.5)
            os.chdir(old)
        return {}

    item = _item(rel)
    SaveRegistrationOutputsd(IdentityToDDF(), "out", overwrite=True, extra_files=chdir_for_a_while, threads=4)(item)
    assert {p.name for p in (tmp_path / "out" / item["registration"]["name"]).iterdir()} == FULL
    assert list(elsewhere.iterdir()) == []


def test_a_failing_writer_leaves_no_folder_and_raises_its_error(pair, tmp_path):
    def broken(item, out, geo):
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="disk full"):
        _run(pair, tmp_path / "out", extra_files=broken)
    assert not any(p.is_dir() for p in (tmp_path / "out").iterdir())
