"""Bundle training through ConfigWorkflow on tiny generated data: trains, validates, checkpoints, resumes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.engines.bundle import bundle_workflow, run_bundle

ROOT = Path(__file__).resolve().parents[2]
BRAIN_TRAIN_BUNDLES = [
    ROOT / "bundles" / name
    for name in ("brain_mri_hybrid_loss", "brain_mri_prob_diffeo", "brain_mri_joint_affine", "brain_mri_lumir_cascade")
]
CODES = (2, 3, 4, 17, 41, 42, 43, 53)  # FreeSurfer: WM, cortex, ventricle, hippocampus (left/right)


def _label_map(shape, seed):
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(float)
    c = np.array(shape)[:, None, None, None] / 2 + rng.normal(0, 1.0, (3, 1, 1, 1))
    r = np.sqrt(((g - c) ** 2).sum(0))
    lab = np.zeros(shape, np.int16)
    left = g[0] < c[0]
    for radius, (cl, cr) in zip((13, 10, 4), ((3, 42), (2, 41), (4, 43))):
        lab[(r < radius + rng.normal(0, 0.5)) & left] = cl
        lab[(r < radius + rng.normal(0, 0.5)) & ~left] = cr
    lab[(np.abs(r - 7) < 1.2) & left & (g[1] > c[1])] = 17
    lab[(np.abs(r - 7) < 1.2) & ~left & (g[1] > c[1])] = 53
    return lab


def make_tiny_brain_dataset(folder: Path, shape=(32, 32, 32)) -> Path:
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    subjects = []
    for i in range(3):
        nib.save(nib.Nifti1Image(_label_map(shape, i), aff), folder / f"seg_{i}.nii.gz")
        subjects.append(f"seg_{i}.nii.gz")
    training = [{"moving_label": a, "fixed_label": b} for a in subjects for b in subjects if a != b]
    validation = []
    for j, (m, f) in enumerate(((3, 4), (4, 3))):
        for role, seed in (("moving", m), ("fixed", f)):
            lab = _label_map(shape, seed)
            img = (lab > 0) * 0.3 + np.isin(lab, (2, 41)) * 0.5 + np.isin(lab, (3, 42)) * 0.2
            nib.save(nib.Nifti1Image(img.astype(np.float32), aff), folder / f"val{j}_{role}.nii.gz")
            nib.save(nib.Nifti1Image(lab, aff), folder / f"val{j}_{role}_seg.nii.gz")
        validation.append({k: f"val{j}_{r}{s}.nii.gz" for k, r, s in (
            ("moving_image", "moving", ""), ("fixed_image", "fixed", ""),
            ("moving_label", "moving", "_seg"), ("fixed_label", "fixed", "_seg"))})  # fmt: skip
    path = folder / "datalist.json"
    path.write_text(json.dumps({"training": training, "validation": validation, "test": validation}))
    return path


def _train(bundle: Path, datalist: Path, out: Path, max_epochs: int):
    wf = bundle_workflow(
        bundle,
        "train",
        "train",
        datalist=str(datalist),
        dataset_dir=str(datalist.parent),
        output_dir=str(out),
        device="cpu",
        channels=8,
        patch_size=[32, 32, 32],
        real_fraction=0.0,  # lumir_cascade: synthetic pairs only (the real OASIS T1s are not in CI)
        epoch_length=2,
        val_interval=1,
        max_epochs=max_epochs,
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return wf


def _evaluate(bundle: Path, datalist: Path, out: Path, **overrides) -> list[dict[str, str]]:
    """Run ``train.json`` + ``evaluate.json`` on the datalist's test section; the rows of its metric CSV."""
    run_bundle(bundle, ["train", "evaluate"], "eval", datalist=str(datalist), output_dir=str(out), device="cpu",
               **overrides)  # fmt: skip
    return list(csv.DictReader(open(out / "evaluation_test.csv")))


@pytest.mark.parametrize("bundle", BRAIN_TRAIN_BUNDLES, ids=lambda p: p.name)
def test_train_validate_checkpoint_and_resume(bundle, tmp_path):
    datalist = make_tiny_brain_dataset(tmp_path)
    out = tmp_path / "run"
    wf = _train(bundle, datalist, out, max_epochs=1)
    trainer = wf.train_trainer if hasattr(wf, "train_trainer") else wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert any(n.startswith("latest") for n in ckpts) and "best_model.pt" in ckpts
    rows = list(csv.DictReader(open(out / "validation.csv")))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_mean_dice"]) <= 1.0
    terms = list(csv.DictReader(open(out / "loss_terms.csv")))
    expected_terms = {
        "brain_mri_hybrid_loss": {"SSDLoss", "MutualInformationLoss", "BlurredBoundaryLoss", "GradientRegulariser"},
        "brain_mri_prob_diffeo": {"recon", "recon_forward", "recon_inverse", "kl"},
        "brain_mri_joint_affine": {"affine_ncc", "local_ncc", "dice", "smooth"},
        "brain_mri_lumir_cascade": {"LocalNCCLoss", "GradientRegulariser"},
    }[bundle.name]
    assert expected_terms | {"total"} <= set(terms[0])
    assert all(np.isfinite(float(r["total"])) for r in terms)
    first = torch.load(next((out / "checkpoints").glob("latest*.pt")), weights_only=True)
    # resume: the same command with a larger budget continues at iteration 2 with the saved optimiser state
    wf2 = _train(bundle, datalist, out, max_epochs=2)
    trainer2 = wf2.parser.get_parsed_content("train#trainer")
    assert trainer2.state.epoch == 2 and trainer2.state.iteration == 4
    assert first["trainer"]["iteration"] == 2
    assert len(list(csv.DictReader(open(out / "validation.csv")))) == 2


@pytest.mark.parametrize("bundle", BRAIN_TRAIN_BUNDLES, ids=lambda p: p.name)
def test_evaluate_config_scores_a_checkpoint(bundle, tmp_path):
    datalist = make_tiny_brain_dataset(tmp_path)
    net = bundle_workflow(bundle, "train", "train", channels=8).parser.get_parsed_content("network_def")
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    rows = _evaluate(bundle, datalist, tmp_path / "eval", channels=8, ckpt_path=str(ckpt))
    assert len(rows) == 1 and 0.0 < float(rows[0]["val_mean_dice"]) <= 1.0


def test_cardiac_bundle_trains_multilevel_and_validates(tmp_path):
    from common.data.cardiac import prepare_phantom_dataset

    bundle = ROOT / "bundles" / "cardiac_cine_ngf_bspline"
    folder = prepare_phantom_dataset(tmp_path / "card", n_train=3, n_val=1, n_test=1, seed=0, progress=False)
    datalist = Path(folder) / "datalist.json" if Path(folder).is_dir() else Path(folder)
    out = tmp_path / "run"
    wf = bundle_workflow(
        bundle,
        "train",
        "train",
        datalist=str(datalist),
        output_dir=str(out),
        device="cpu",
        batch_size=2,
        epoch_length=2,
        max_epochs=1,
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    terms = list(csv.DictReader(open(out / "loss_terms.csv")))
    assert len(terms) == 2 and {"NGFLoss", "LabelSSDLoss", "CurvatureRegulariser"} <= set(terms[0])
    rows = list(csv.DictReader(open(out / "validation.csv")))
    assert 0.0 < float(rows[0]["val_mean_dice"]) <= 1.0
    assert (out / "checkpoints" / "best_model.pt").is_file()


def test_cardiac_evaluate_config_scores_the_shipped_weights(tmp_path):
    from common.data.cardiac import prepare_phantom_dataset

    bundle = ROOT / "bundles" / "cardiac_cine_ngf_bspline"
    folder = prepare_phantom_dataset(tmp_path / "card", n_train=1, n_val=1, n_test=2, seed=0, progress=False)
    datalist = Path(folder) / "datalist.json" if Path(folder).is_dir() else Path(folder)
    rows = _evaluate(bundle, datalist, tmp_path / "eval")
    assert len(rows) == 1 and float(rows[0]["val_mean_dice"]) > 0.85  # shipped weights on 4 held-out phantom pairs
