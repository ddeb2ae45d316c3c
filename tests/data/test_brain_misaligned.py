"""scripts/prepare_data.py brain_misaligned: seeded affine misalignment of the held-out moving images."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.brain.synth import affine_matrix

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (30, 34, 28)


def _prepare():
    from scripts import prepare_data

    return prepare_data


def _brain_folder(tmp: Path) -> Path:
    """A look-alike of data/prepared/brain: datalist_2mm.json with one validation and one test pair."""
    folder = tmp / "brain"
    aff = np.diag([-2.0, 2.0, 2.0, 1.0])
    g = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")).astype(float)
    entries = {}
    for split, centre in (("validation", (14, 16, 13)), ("test", (15, 17, 14))):
        rel = Path("heldout") / split / "pair_00"
        (folder / rel).mkdir(parents=True)
        r = np.sqrt(((g - np.reshape(centre, (3, 1, 1, 1))) ** 2 / np.reshape((64, 36, 25), (3, 1, 1, 1))).sum(0))
        lab = np.where(r < 1.0, 2, 0) + np.where(r < 0.5, 2, 0) + np.where((r < 1.0) & (g[0] > centre[0] + 3), 13, 0)
        img = (lab * 0.05).astype(np.float32)
        entry = {"id": f"{split}_00"}
        for role in ("moving", "fixed"):
            nib.save(nib.Nifti1Image(img, aff), folder / rel / f"{role}_image_2mm.nii.gz")
            nib.save(nib.Nifti1Image(lab.astype(np.uint16), aff), folder / rel / f"{role}_label_2mm.nii.gz")
            entry[f"{role}_image"] = str(rel / f"{role}_image_2mm.nii.gz")
            entry[f"{role}_label"] = str(rel / f"{role}_label_2mm.nii.gz")
        entries[split] = [entry]
    datalist = {"description": "look-alike.", "grid": {"shape": list(SHAPE), "spacing_mm": [2.0, 2.0, 2.0]},
                "training": [], **entries}  # fmt: skip
    (folder / "datalist_2mm.json").write_text(json.dumps(datalist))
    return folder


def _com(lab: np.ndarray) -> np.ndarray:
    return np.argwhere(lab > 0).mean(0)


def test_moving_maps_move_by_the_recorded_affine_and_fixed_maps_stay(tmp_path):
    folder = _brain_folder(tmp_path)
    result = _prepare().brain_misaligned(out_dir=str(tmp_path))
    datalist = json.loads((folder / "datalist_misaligned_2mm.json").read_text())
    assert result["datalist"].endswith("datalist_misaligned_2mm.json")
    for split in ("validation", "test"):
        (entry,) = datalist[split]
        draw = entry["misalignment"]
        assert all(abs(a) <= 15 for a in draw["rotation_deg"]) and all(abs(t) <= 15 for t in draw["translation_mm"])
        assert all(0.9 <= s <= 1.1 for s in draw["scale"]) and 0.9 < draw["brain_kept_fraction"] <= 1.0
        assert max(abs(a) for a in draw["rotation_deg"]) > 3 or max(abs(t) for t in draw["translation_mm"]) > 3
        src = json.loads((folder / "datalist_2mm.json").read_text())[split][0]
        for key in ("fixed_image", "fixed_label"):
            assert (folder / entry[key]).read_bytes() == (folder / src[key]).read_bytes()
        old = np.asarray(nib.load(folder / src["moving_label"]).dataobj)
        new = np.asarray(nib.load(folder / entry["moving_label"]).dataobj)
        assert set(np.unique(new)) <= set(np.unique(old))
        # pull-back: new(x) = old(A (x - c) + c + t), so the centre of mass moves to A^-1 (com - c - t) + c
        m = affine_matrix(draw["rotation_deg"], draw["scale"], (0, 0, 0), np.asarray(draw["translation_mm"]) / 2.0)
        c = (np.asarray(SHAPE) - 1) / 2
        expected = np.linalg.solve(m[:, :3], _com(old) - c - m[:, 3]) + c
        assert np.linalg.norm(_com(new) - expected) < 0.5
        assert np.linalg.norm(_com(new) - _com(old)) > 1.0
        image = nib.load(folder / entry["moving_image"])
        assert image.shape == SHAPE and np.allclose(image.affine, np.diag([-2.0, 2.0, 2.0, 1.0]))


def test_draws_are_reproducible_and_differ_between_pairs(tmp_path):
    prepare = _prepare()
    folder = _brain_folder(tmp_path)
    prepare.brain_misaligned(out_dir=str(tmp_path))
    first = json.loads((folder / "datalist_misaligned_2mm.json").read_text())
    label = folder / first["test"][0]["moving_label"]
    before = label.read_bytes()
    prepare.brain_misaligned(out_dir=str(tmp_path), force=True)
    again = json.loads((folder / "datalist_misaligned_2mm.json").read_text())
    assert again == first and label.read_bytes() == before
    assert first["test"][0]["misalignment"]["rotation_deg"] != first["validation"][0]["misalignment"]["rotation_deg"]


def test_missing_brain_datalist_is_named(tmp_path):
    with pytest.raises(SystemExit, match="datalist_2mm.json not found.*prepare_data.py brain"):
        _prepare().brain_misaligned(out_dir=str(tmp_path))
