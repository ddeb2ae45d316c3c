"""Fine-tuning a bundle on a user's own scans (the MONAI Label app's trainer, common.engines.finetune)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.engines.finetune import _LabelsOnNetGrid, finetune_bundle, pair_list

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "brain_mri_hybrid_loss"


def test_pair_list_is_every_ordered_pair_once_seeded_and_capped():
    items = [{"image": f"i{k}", "label": None if k else "l0"} for k in range(4)]
    pairs = pair_list(items, max_pairs=100, seed=3)
    assert len(pairs) == 12 and len({p["id"] for p in pairs}) == 12
    assert all(p["moving_image"] != p["fixed_image"] for p in pairs)
    assert pairs == pair_list(items, max_pairs=100, seed=3) and pairs != pair_list(items, max_pairs=100, seed=4)
    assert pair_list(items, max_pairs=5, seed=3) == pairs[:5]
    first = next(p for p in pairs if p["moving_image"] == "i0")
    assert first["moving_label"] == "l0" and first["fixed_label"] is None


def test_labels_go_onto_the_network_grid_only_when_both_sides_have_one(tmp_path):
    lab = np.zeros((20, 20, 20), np.int16)
    lab[5:15, 5:15, 5:15] = 7
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    for name in ("m", "f"):
        nib.save(nib.Nifti1Image(lab, aff), tmp_path / f"{name}.nii.gz")
    net_aff = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm network grid over the same extent
    d = {"fixed_image": torch.zeros(1, 10, 10, 10), "geometry": {"net_affine": torch.as_tensor(net_aff)},
         "paths": {"moving_label": str(tmp_path / "m.nii.gz"), "fixed_label": str(tmp_path / "f.nii.gz")}}  # fmt: skip
    out = _LabelsOnNetGrid()(d)
    assert out["moving_label"].shape == (1, 10, 10, 10) and set(out["moving_label"].unique().tolist()) == {0, 7}
    assert int((out["fixed_label"] == 7).sum()) == 125  # the 10^3 mm cube = 5^3 voxels of 2 mm
    d["paths"] = {"moving_label": str(tmp_path / "m.nii.gz")}
    assert "moving_label" not in _LabelsOnNetGrid()(d)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["brain_mri_hybrid_loss", "brain_mri_lumir_cascade", "brain_mri_joint_affine",
                                  "brain_mri_prob_diffeo"])  # fmt: skip
def test_finetune_on_the_demo_scans_lowers_their_loss_and_writes_loadable_weights(tmp_path, name):
    """Measured (3 steps, lr 1e-4): hybrid -0.7735 -> lower, lumir 0.4688 -> 0.4455, joint_affine 0.480 -> 0.434,
    prob_diffeo 2.007 -> 1.995."""
    bundle = ROOT / "bundles" / name
    images = [str(ROOT / "data" / "demo" / "fixed_t1.nii.gz"), str(ROOT / "data" / "demo" / "moving_t1.nii.gz")]
    out = tmp_path / "tuned" / "model.pt"
    r = finetune_bundle(bundle, images, out, iterations=3, with_atlas=False)
    assert r["pairs"] == 2 and r["label_pairs"] == 0 and r["iterations"] == 3 and r["tensors_changed"] > 0
    assert r["loss_after"] < r["loss_before"], r
    assert json.loads(out.with_suffix(".json").read_text())["loss_after"] == r["loss_after"]
    state = torch.load(out, map_location="cpu", weights_only=True)
    shipped = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state.keys() == shipped.keys() and any(not torch.equal(state[k], shipped[k]) for k in state)
    with pytest.raises(ValueError, match="at least 2 images"):
        finetune_bundle(bundle, images[:1], out, with_atlas=False)


@pytest.mark.slow
def test_saved_labels_add_the_label_term(tmp_path):
    """The atlas moved by a known rigid map, with its labels (values 1..32), paired with the atlas: the label term
    enters the loss (a different value than the same pairs without labels)."""
    from common.engines.label_app import to_slicer_values
    from tests.atlas_case import moved_atlas

    image, truth, _ = moved_atlas(tmp_path)
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(to_slicer_values(truth), nib.load(image).affine), label)
    with_labels = finetune_bundle(BUNDLE, [str(image)], tmp_path / "a.pt", labels=[str(label)], iterations=1)
    assert with_labels["pairs"] == 2 and with_labels["label_pairs"] == 2
    without = finetune_bundle(BUNDLE, [str(image)], tmp_path / "b.pt", iterations=1)
    assert without["label_pairs"] == 0
    assert abs(with_labels["loss_before"] - without["loss_before"]) > 1e-3, (with_labels, without)


@pytest.mark.parametrize(
    "name, expected",
    [("brain_mri_hybrid_loss", True), ("brain_mri_joint_affine", True), ("brain_mri_lumir_cascade", False),
     ("brain_mri_prob_diffeo", False)],
)  # fmt: skip
def test_which_bundles_losses_use_saved_labels(name, expected):
    """What the README tells a fine-tuning user: labels add a term to hybrid_loss and joint_affine only."""
    from common.engines.finetune import _bundle_parts

    parts = _bundle_parts(ROOT / "bundles" / name)
    assert parts["label_term"] is expected
    inference = json.loads((ROOT / "bundles" / name / "configs" / "inference.json").read_text())
    assert parts["load"].multiple == inference["preprocessing"]["multiple"]  # the bundle's own loader
