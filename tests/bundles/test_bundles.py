"""Every bundle through MONAI's own machinery, model-zoo style: metadata, network I/O, export, inference."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

from common.engines.bundle import bundle_workflow

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "bundles" / "_schema" / "meta_schema_20240725.json"
BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if (p / "configs" / "inference.json").is_file())


def _lia(spacing: float) -> np.ndarray:
    a = np.zeros((4, 4))
    a[0, 0], a[2, 1], a[1, 2], a[3, 3] = -spacing, -spacing, spacing, 1.0
    a[:3, 3] = (20.0, 15.0, -10.0)
    return a


def _dims(bundle: Path) -> int:
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    return len(meta["network_data_format"]["inputs"]["image"]["spatial_shape"])


def _input_shape(bundle: Path, n: int) -> tuple[int, ...]:
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    shape = meta["network_data_format"]["inputs"]["image"]["spatial_shape"]
    return tuple(int(eval(str(s), {"n": n})) for s in shape)  # "16*n" -> 16 n


def demo_pair(tmp: Path, shape=(26, 30, 22)) -> dict[str, str]:
    dims = len(shape)
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    out = {}
    for name, shift in (("moving", 1.5), ("fixed", 0.0)):
        c = np.array(shape).reshape(dims, *([1] * dims)) / 2 + shift
        r2 = ((g - c) ** 2).sum(0)
        img = np.exp(-r2 / 40.0).astype(np.float32) + 0.1 * (g[0] / shape[0]).astype(np.float32)
        lab = (r2 < 25).astype(np.int16) + (r2 < 9).astype(np.int16)
        aff = _lia(1.0) if dims == 3 else np.diag([1.4, 1.4, 1.0, 1.0])
        nib.save(nib.Nifti1Image(img, aff), tmp / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), tmp / f"{name}_seg.nii.gz")
        out[name] = str(tmp / f"{name}.nii.gz")
        out[f"{name}_label"] = str(tmp / f"{name}_seg.nii.gz")
    return out


@pytest.fixture(params=BUNDLES, ids=lambda p: p.name)
def bundle(request) -> Path:
    return request.param


def test_metadata_verifies_offline(bundle):
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 2
    assert "pred" in meta["network_data_format"]["outputs"]


def test_network_in_out_matches_metadata(bundle):
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        n=2,  # 16 voxels: joint_affine normalises each pair, which needs more than one voxel at 1/8 size
        any=16,
        bundle_root=str(bundle),
        device="cpu",
    )


def test_traced_network_reproduces_eager(bundle):
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def").eval()
    x = torch.rand(1, 2, *_input_shape(bundle, 2))
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        y = torch.rand(1, 2, *_input_shape(bundle, 2))
        assert torch.allclose(traced(y), net(y), atol=1e-5)


def _untrained_checkpoint(bundle, folder):
    """The bundle's ``network_def`` with its initial weights, saved as a checkpoint the workflow can load."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    ckpt = folder / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    return ckpt


def test_inference_workflow_writes_outputs_in_fixed_geometry(bundle, tmp_path):
    files = demo_pair(tmp_path, (26, 30, 36) if _dims(bundle) == 3 else (100, 90))
    ckpt = _untrained_checkpoint(bundle, tmp_path)
    out = tmp_path / "out"
    wf = bundle_workflow(
        bundle,
        "inference",
        "infer",
        ckpt_path=str(ckpt),
        moving=files["moving"],
        fixed=files["fixed"],
        moving_label=files["moving_label"],
        fixed_label=files["fixed_label"],
        output_dir=str(out),
        device="cpu",
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    pair = out / "moving_to_fixed"
    names = ["warped.nii.gz", "warped_label.nii.gz", "disp.nii.gz", "qc.png", "displacement_itk.nii.gz"]
    for name in names:
        assert (pair / name).is_file(), name
    fixed = nib.load(files["fixed"])
    warped = nib.load(pair / "warped.nii.gz")
    assert warped.shape == fixed.shape
    assert np.allclose(warped.affine, fixed.affine)
    assert nib.load(pair / "disp.nii.gz").shape == (*fixed.shape, _dims(bundle))
    labels = np.asarray(nib.load(pair / "warped_label.nii.gz").dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    metrics = json.loads((pair / "metrics.json").read_text())["metrics"]
    assert metrics["dice_before"] is not None and 0 <= metrics["dice_after"] <= 1
    assert (out / "summary.csv").read_text().startswith("name,")
    # no temporary files left behind
    assert not [p for p in pair.iterdir() if p.name.startswith(".")]
    from common.io.itk_field import read_itk_displacement

    itk_ddf, itk_affine = read_itk_displacement(pair / "displacement_itk.nii.gz")
    assert tuple(itk_ddf.shape) == (1, _dims(bundle), *fixed.shape)


IO_BUNDLES = [b for b in BUNDLES if "instance_iterations" in json.loads((b / "configs" / "inference.json").read_text())]


def test_every_3d_brain_bundle_exposes_instance_optimisation():
    names = {b.name for b in IO_BUNDLES}
    assert names == {b.name for b in BUNDLES if b.name.startswith("brain_")}


@pytest.mark.parametrize("bundle", IO_BUNDLES, ids=lambda p: p.name)
def test_instance_iterations_refine_the_written_field(bundle, tmp_path):
    """``instance_iterations`` > 0: the refined field is what every output carries, and it matches better."""
    files = demo_pair(tmp_path, (26, 30, 36))
    ckpt = _untrained_checkpoint(bundle, tmp_path)
    metrics, disp = {}, {}
    for iters in (0, 30):
        out = tmp_path / f"io{iters}"
        wf = bundle_workflow(bundle, "inference", "infer", ckpt_path=str(ckpt), moving=files["moving"],
                             fixed=files["fixed"], output_dir=str(out), device="cpu", instance_iterations=iters,
                             instance_levels=[1], instance_schedule=[1.0], instance_reg_weight=1.0,
                             instance_grid_factor=2, instance_lr=0.2, instance_fold_weight=0.0,
                             instance_ncc_kernel=5)  # fmt: skip
        wf.initialize()
        wf.run()
        wf.finalize()
        pair = out / "moving_to_fixed"
        metrics[iters] = json.loads((pair / "metrics.json").read_text())["metrics"]
        disp[iters] = np.asarray(nib.load(pair / "disp.nii.gz").dataobj, dtype=np.float32)
    assert "seconds_instance_optimisation" not in metrics[0]
    assert metrics[30]["instance_iterations"] == 30 and metrics[30]["seconds_instance_optimisation"] > 0
    assert metrics[30]["ncc_after"] > metrics[0]["ncc_after"] + 0.005, (metrics[0]["ncc_after"], metrics[30])
    assert np.abs(disp[30] - disp[0]).max() > 0.1
