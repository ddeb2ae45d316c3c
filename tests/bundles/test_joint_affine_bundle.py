"""brain_mri_joint_affine end to end: the exported ITK affine file is the network's affine part, in world space."""

from __future__ import annotations

import json

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from test_bundles import ROOT, demo_pair

from common.engines.bundle import bundle_workflow

BUNDLE = ROOT / "bundles" / "brain_mri_joint_affine"
LPS = np.diag([-1.0, -1.0, 1.0])


def _checkpoint(tmp_path) -> str:
    """Random weights whose affine head outputs a fixed, clearly non-identity affine for any input and whose
    deformable part is a constant shift of 1.5 voxels along array axis 0 (flow head bias)."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():
        net.affine_head.weight.zero_()
        # change from identity in normalised coordinates, rows of [A - I | t]
        net.affine_head.bias.copy_(torch.tensor([0.06, 0.1, 0.0, 0.08, -0.05, 0.02, 0.04, -0.1, 0.0, 0.03, 0.05, 0.0]))
        net.flow.conv.weight.zero_()
        net.flow.conv.bias.copy_(torch.tensor([1.5, 0.0, 0.0]))
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    return str(path)


def _infer(tmp_path, files, ckpt, component, **overrides):
    out = tmp_path / (component + "".join(f"_{k}{v}" for k, v in overrides.items()))
    wf = bundle_workflow(BUNDLE, "inference", "infer", ckpt_path=ckpt, moving=files["moving"], fixed=files["fixed"],
                         output_dir=str(out), device="cpu", component=component, **overrides)  # fmt: skip
    wf.initialize()
    wf.run()
    wf.finalize()
    return out / "moving_to_fixed"


def test_affine_file_maps_fixed_points_like_the_affine_displacement_output(tmp_path):
    files = demo_pair(tmp_path, (26, 30, 36))
    ckpt = _checkpoint(tmp_path)
    affine_dir = _infer(tmp_path, files, ckpt, "affine")
    total_dir = _infer(tmp_path, files, ckpt, "total")
    assert (total_dir / "affine.tfm").is_file()
    outputs = json.loads((total_dir / "metrics.json").read_text())["outputs"]
    assert outputs["affine_itk"].endswith("affine.tfm")

    # the same affine file whichever component the displacement outputs carry
    def params(path):  # least-squares fits differ in the last float bits (1e-17) between runs
        lines = [ln for ln in path.read_text().splitlines() if ln.startswith(("Parameters:", "FixedParameters:"))]
        return np.array([float(v) for ln in lines for v in ln.split(":")[1].split()])

    assert np.allclose(params(affine_dir / "affine.tfm"), params(total_dir / "affine.tfm"), atol=1e-9)
    (transform,) = itk.transformread(str(total_dir / "affine.tfm"))
    field = nib.load(affine_dir / "displacement_itk.nii.gz")
    disp = np.asarray(field.dataobj, dtype=np.float64).reshape(*field.shape[:3], 3)  # LPS mm, ITK vector image
    fixed_aff = nib.load(files["fixed"]).affine
    moved = 0
    for x in ([13, 15, 11], [5, 20, 8], [20, 7, 15], [9, 9, 17]):
        p = LPS @ (fixed_aff @ np.append(x, 1.0))[:3]
        expected = p + disp[tuple(x)]
        got = np.array(transform.TransformPoint(p.tolist()))
        assert np.allclose(got, expected, atol=0.05), (x, got, expected)
        moved = max(moved, np.linalg.norm(got - p))
    assert moved > 1.0  # the affine is far from identity: the check above is not vacuous


@pytest.mark.parametrize("component", ["total", "deformable"])
def test_other_components_differ_from_the_affine_part(tmp_path, component):
    files = demo_pair(tmp_path, (26, 30, 36))
    ckpt = _checkpoint(tmp_path)
    a = np.asarray(nib.load(_infer(tmp_path, files, ckpt, "affine") / "disp.nii.gz").dataobj)
    b = np.asarray(nib.load(_infer(tmp_path, files, ckpt, component) / "disp.nii.gz").dataobj)
    assert np.abs(a).max() > 1.0 and np.abs(a - b).mean() > 0.5  # the 1.5-voxel (6 mm) shift shows
    if component == "deformable":  # a constant shift on the 4 mm network grid, mapped to the 1 mm fixed grid
        centre = b[8:18, 10:20, 6:16].reshape(-1, 3)
        assert np.allclose(np.linalg.norm(centre, axis=1), 6.0, atol=0.3)


def test_a_failing_affine_export_leaves_no_half_written_pair_folder(tmp_path, monkeypatch):
    import common.io.itk_affine

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(common.io.itk_affine, "write_itk_affine", full_disk)
    files = demo_pair(tmp_path, (26, 30, 36))
    with pytest.raises(Exception) as info:  # MONAI's config runner wraps the error
        _infer(tmp_path, files, _checkpoint(tmp_path), "total")
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("No space left on device" in m for m in chain)
    out = tmp_path / "total"
    assert not out.exists() or not [p for p in out.iterdir() if p.name != "summary.csv"]


def test_study_checkpoint_choice_names_the_file_and_rejects_bad_values(tmp_path):
    from scripts.joint_affine_study import checkpoint_path

    ck = tmp_path / "noanat" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "best_model.pt").write_bytes(b"x")
    (ck / "latest_checkpoint_epoch=40.pt").write_bytes(b"x")
    assert checkpoint_path(tmp_path / "noanat") == ck / "best_model.pt"
    assert checkpoint_path(tmp_path / "noanat", "epoch=40") == ck / "latest_checkpoint_epoch=40.pt"
    with pytest.raises(SystemExit, match="epoch=60.pt: no such checkpoint for variant 'noanat'"):
        checkpoint_path(tmp_path / "noanat", "epoch=60")
    with pytest.raises(SystemExit, match="'best' or 'epoch=N'"):
        checkpoint_path(tmp_path / "noanat", "last")


def test_affine_refinement_option_improves_a_wrong_network_affine(tmp_path):
    files = demo_pair(tmp_path, (26, 30, 36))
    ckpt = _checkpoint(tmp_path)  # its affine part is a fixed, wrong map for every pair
    plain = _infer(tmp_path, files, ckpt, "affine")
    refined = _infer(tmp_path, files, ckpt, "affine", affine_iterations=60, affine_lr=0.02)
    before = json.loads((plain / "metrics.json").read_text())["metrics"]
    after = json.loads((refined / "metrics.json").read_text())["metrics"]
    assert after["ncc_after"] > before["ncc_after"] + 0.05, (before, after)
    moved = np.abs(
        np.asarray(nib.load(plain / "disp.nii.gz").dataobj) - np.asarray(nib.load(refined / "disp.nii.gz").dataobj)
    )
    assert moved.max() > 1.0  # the refined map, not the network's, is what the outputs carry


def test_inference_feeds_the_network_the_arrays_training_validation_feeds_it(tmp_path):
    """The network runs at 4 mm on data read at 2 mm (or finer): inference must resample onto the grid training's
    Spacingd + DivisiblePadd gave it (same positions, same size and padding). With the old extent-fitting grid
    a 2 mm brain went in as 48x56x64 voxels of 3.95 mm instead of 40x48x56 of 4 mm, and the held-out Dice of
    the same weights was 0.494 instead of 0.639."""
    shape = (48, 40, 56)  # 2 mm voxels -> 24 x 20 x 28 at 4 mm (MONAI's rounding), padded to 24 x 24 x 32
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(np.float32)
    aff = np.array([[-2.0, 0, 0, 40.0], [0, 0, 2.0, -50.0], [0, -2.0, 0, 45.0], [0, 0, 0, 1]])  # LIA, 2 mm
    files = {}
    for name, shift in (("moving", 1.0), ("fixed", 0.0)):
        img = np.sin(g[0] / 3.0 + shift) * np.cos(g[1] / 4.0) + g[2] / shape[2]
        nib.save(nib.Nifti1Image(img.astype(np.float32), aff), tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image((img > 0.5).astype(np.int16), aff), tmp_path / f"{name}_seg.nii.gz")
        files[f"{name}_image"] = str(tmp_path / f"{name}.nii.gz")
        files[f"{name}_label"] = str(tmp_path / f"{name}_seg.nii.gz")
    parsed = {}
    for config, key in (("train.json", "validate#preprocessing"), ("inference.json", "preprocessing")):
        parser = ConfigParser()
        parser.read_config(str(BUNDLE / "configs" / config))
        parser["bundle_root"] = str(BUNDLE)
        parsed[config] = parser.get_parsed_content(key)
    trained_on = parsed["train.json"](dict(files))
    inferred = parsed["inference.json"]({"moving_image": files["moving_image"], "fixed_image": files["fixed_image"]})
    assert tuple(inferred["fixed_image"].shape) == tuple(trained_on["fixed_image"].shape) == (1, 24, 24, 32)
    net = inferred["geometry"]["net_affine"].numpy()
    assert np.allclose(net[:3, :3], 2.0 * aff[:3, :3])  # exactly 4 mm, LIA
    # DivisiblePadd put 2 voxels before along axes 1 and 2: there sits the fixed image's first voxel centre
    assert np.allclose(net @ [0, 2, 2, 1], aff @ [0, 0, 0, 1])
    for key in ("moving_image", "fixed_image"):
        a = inferred[key].numpy().ravel()
        b = np.asarray(trained_on[key]).ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.99, key
