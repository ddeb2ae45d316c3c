"""brain_mri_lumir_cascade: unsupervised data branches, the LUMIR retraining config, the submission folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.engines.bundle import bundle_workflow
from common.io.l2r import read_l2r_displacement
from tests.bundles.test_train_workflows import make_tiny_brain_dataset

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundles" / "brain_mri_lumir_cascade"
SMALL = {"patch_size": [32, 32, 32], "epoch_length": 2, "max_epochs": 1, "val_interval": 1, "device": "cpu"}


def _blob_image(path: Path, shape, centre, affine) -> None:
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(np.float32)
    r2 = sum((g[k] - centre[k]) ** 2 for k in range(3))
    img = np.exp(-r2 / 60.0) + 0.2 * np.exp(-r2 / 400.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img.astype(np.float32), affine), str(path))


def _real_subjects(folder: Path) -> Path:
    """Two image-only subjects with the ids of the training config's real T1s (oasis_a, oasis_b)."""
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    subjects = []
    for sid, c in (("oasis_a", (15, 16, 16)), ("oasis_b", (17, 15, 16)), ("oasis_c", (16, 16, 14))):
        _blob_image(folder / f"{sid}.nii.gz", (32, 32, 32), c, aff)
        subjects.append({"id": sid, "image": f"{sid}.nii.gz"})
    path = folder / "real.json"
    path.write_text(json.dumps({"subjects": subjects}))
    return path


def test_training_branches_carry_no_labels_and_real_pairs_use_the_chosen_subjects(tmp_path):
    datalist = make_tiny_brain_dataset(tmp_path)
    real = _real_subjects(tmp_path)
    wf = bundle_workflow(
        BUNDLE, "train", "train", datalist=str(datalist), real_datalist=str(real), output_dir=str(tmp_path / "r"),
        real_fraction=1.0, **SMALL,
    )  # fmt: skip
    parser = wf.parser
    real_pairs = parser.get_parsed_content("train#real_data")
    assert sorted(p["id"] for p in real_pairs) == ["oasis_a_to_oasis_b", "oasis_b_to_oasis_a"]  # oasis_c held out
    dataset = parser.get_parsed_content("train#dataset")
    synth_item, real_item = dataset[0], dataset[len(dataset) - 1]
    for item in (synth_item, real_item):
        assert {"moving_image", "fixed_image"} <= set(item)
        assert "moving_label" not in item and "fixed_label" not in item  # unsupervised: labels never reach the loss
        assert tuple(item["moving_image"].shape) == (1, 32, 32, 32)
    # real_fraction = 1: every sampled index falls in the real part of the concatenated dataset
    sampler = parser.get_parsed_content("train#sampler")
    assert min(sampler) >= len(parser.get_parsed_content("train#synth_data"))
    wf.initialize()
    wf.run()
    terms = list(csv.DictReader(open(tmp_path / "r" / "loss_terms.csv")))
    assert set(terms[0]) == {"iteration", "epoch", "LocalNCCLoss", "GradientRegulariser", "total"}


def test_train_lumir_config_trains_on_a_lumir_layout(tmp_path):
    from scripts import prepare_data as prep

    root = tmp_path / "LUMIR"
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    training = []
    for k, sid in enumerate(("0001", "0002", "0003")):
        rel = f"./imagesTr/LUMIRMRI_{sid}_0000.nii.gz"
        _blob_image(root / rel, (30, 36, 34), (15 + k, 18, 17), ras)
        training.append({"image": rel})
    (root / "LUMIR_dataset.json").write_text(json.dumps({"training": training}))
    summary = prep.lumir(str(root), out_dir=str(tmp_path / "prepared"))
    assert summary["training_subjects"] == 3
    datalist = make_tiny_brain_dataset(tmp_path)
    wf = bundle_workflow(
        BUNDLE, ["train", "train_lumir"], "train", lumir_datalist=summary["datalist"], datalist=str(datalist),
        output_dir=str(tmp_path / "run"), **SMALL,
    )  # fmt: skip
    parser = wf.parser
    assert parser.get_parsed_content("train#synth_data") == []
    item = parser.get_parsed_content("train#dataset")[0]
    assert tuple(item["fixed_image"].shape) == (1, 32, 32, 32)
    # reoriented to the bundle's LIA convention, then centre-padded/cropped to 32^3: a blob at RAS voxel
    # (15 + k, 18, 17) of a 30x36x34 image lands at LIA (29 - 15 - k, 33 - 17, 18) -> (15 - k, 15, 16)
    for key in ("moving_image", "fixed_image"):
        top = np.argwhere(np.asarray(item[key][0]) >= float(item[key].max()) - 1e-6)  # clipped plateau: a ball
        assert tuple(int(i) for i in np.rint(top.mean(0))) in {(15 - k, 15, 16) for k in range(3)}
    wf.initialize()
    wf.run()
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2
    assert (tmp_path / "run" / "checkpoints" / "best_model.pt").is_file()


def test_inference_writes_a_lumir_submission_folder(tmp_path):
    aff = np.diag([-2.0, -2.0, 2.0, 1.0])
    moving, fixed = tmp_path / "LUMIRMRI_3455_0000.nii.gz", tmp_path / "LUMIRMRI_3454_0000.nii.gz"
    _blob_image(moving, (30, 28, 26), (16, 14, 13), aff)
    _blob_image(fixed, (30, 28, 26), (14, 14, 13), aff)
    net = bundle_workflow(BUNDLE, "inference", "infer").parser.get_parsed_content("network_def")
    torch.manual_seed(0)
    with torch.no_grad():  # a non-trivial field: perturb the finest estimator's head
        head = net.estimators[f"{net.finest_level}_0"].head.conv
        head.weight.normal_(0.0, 1e-3)
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    out, sub = tmp_path / "out", tmp_path / "submission"
    wf = bundle_workflow(
        BUNDLE, "inference", "infer", ckpt_path=str(ckpt), moving=str(moving), fixed=str(fixed),
        output_dir=str(out), submission_dir=str(sub), device="cpu",
    )  # fmt: skip
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    assert sorted(p.name for p in sub.iterdir()) == ["disp_3454_3455.nii.gz"]  # disp_<fixed>_<moving>
    (pair,) = [p for p in out.iterdir() if p.is_dir()]
    sub_field = read_l2r_displacement(sub / "disp_3454_3455.nii.gz")
    assert torch.equal(torch.as_tensor(sub_field), torch.as_tensor(read_l2r_displacement(pair / "disp.nii.gz")))
    assert tuple(sub_field.shape) == (1, 3, 30, 28, 26)
    assert float(torch.as_tensor(sub_field).abs().max()) > 0.0


@pytest.mark.parametrize("switch", ["bilateral", "co_attention", "large_kernel"])
def test_inference_config_switches_reach_the_network(switch):
    net = bundle_workflow(BUNDLE, "inference", "infer", **{switch: False}).parser.get_parsed_content("network_def")
    module = {"bilateral": "bilateral", "co_attention": "co_attention", "large_kernel": "encoder"}[switch]
    if switch == "large_kernel":
        assert type(net.encoder[0][0]).__name__ == "ConvBlock"
    elif switch == "bilateral":
        assert getattr(net, module) is None
    else:
        assert len(getattr(net, module)) == 0
