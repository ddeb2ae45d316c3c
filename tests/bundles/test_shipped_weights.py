"""Regression tests of shipped weights (not of training): every bundle that says its weights are trained must
ship them loadable with weights_only=True, must improve the real demo pair over zero displacement, and must give the
same field as recorded in ``tests/bundles/golden/<bundle>.npz`` (refactors and speed work keep behaviour).

The golden fingerprints are rewritten only on purpose, when a bundle ships new weights:
``UPDATE_GOLDEN=1 python -m pytest tests/bundles/test_shipped_weights.py``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TRAINED = [
    p
    for p in sorted((ROOT / "bundles").iterdir())
    if (p / "configs" / "metadata.json").is_file()
    and json.loads((p / "configs" / "metadata.json").read_text()).get("weights_trained", False)
]


def test_untrained_bundles_ship_no_weights():
    for p in sorted((ROOT / "bundles").iterdir()):
        meta = p / "configs" / "metadata.json"
        if meta.is_file() and not json.loads(meta.read_text()).get("weights_trained", False):
            assert not (p / "models" / "model.pt").exists(), f"{p.name}: weights shipped but not marked trained"


@pytest.mark.skipif(not TRAINED, reason="no bundle ships trained weights yet")
@pytest.mark.parametrize("bundle", TRAINED, ids=lambda p: p.name)
def test_shipped_weights_load_safely_match_hash_and_improve_the_demo_pair(bundle, tmp_path):
    from common.engines.bundle import bundle_workflow

    weights = bundle / "models" / "model.pt"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    recorded = (bundle / "models" / "model.pt.sha256").read_text()
    assert recorded == f"{hashlib.sha256(weights.read_bytes()).hexdigest()}  model.pt\n"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    dims = len(meta["network_data_format"]["inputs"]["image"]["spatial_shape"])
    if dims == 3:  # the shipped real OASIS-1 demo pair
        pair = {
            "moving": ROOT / "data" / "demo" / "moving_t1.nii.gz",
            "fixed": ROOT / "data" / "demo" / "fixed_t1.nii.gz",
        }
    else:  # no real ED/ES pair exists here: held-out phantom test subject 0 (never trained on), rendered fresh
        pair = _phantom_pair(tmp_path)
    out = tmp_path / "out"
    wf = bundle_workflow(
        bundle,
        "inference",
        "infer",
        moving=str(pair["moving"]),
        fixed=str(pair["fixed"]),
        moving_label=str(pair["moving_label"]) if "moving_label" in pair else None,
        fixed_label=str(pair["fixed_label"]) if "fixed_label" in pair else None,
        output_dir=str(out),
        device="cpu",
    )
    wf.initialize()
    wf.run()
    metrics = json.loads(next(out.glob("*/metrics.json")).read_text())["metrics"]
    _check_golden(bundle, next(out.glob("*/disp.nii.gz")), recorded.split()[0])
    assert metrics["ncc_after"] > metrics["ncc_before"] + 0.01
    assert metrics["percent_folding"] < 1.0
    if "dice_before" in metrics:
        assert metrics["dice_after"] > metrics["dice_before"] + 0.1


def fingerprint(disp: np.ndarray) -> dict[str, np.ndarray]:
    """A field's fingerprint: every 16th voxel of each component, and each component's mean, mean |u| and std over
    the whole grid (float64)."""
    comps = np.moveaxis(np.asarray(disp, dtype=np.float64), -1, 0)
    step = tuple(slice(None, None, 16) for _ in range(comps.ndim - 1))
    stats = np.stack([[c.mean(), np.abs(c).mean(), c.std()] for c in comps])
    return {"sample": comps[(slice(None), *step)].astype(np.float32), "stats": stats}


def _check_golden(bundle: Path, disp_path: Path, weights_sha: str) -> None:
    import nibabel as nib

    golden = ROOT / "tests" / "bundles" / "golden" / f"{bundle.name}.npz"
    got = fingerprint(np.asarray(nib.load(str(disp_path)).dataobj))
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(golden, weights_sha256=np.array(weights_sha), **got)
        return
    ref = np.load(golden)
    assert str(ref["weights_sha256"]) == weights_sha, (
        f"{bundle.name}: new weights; record their field on purpose with UPDATE_GOLDEN=1 (see the module docstring)"
    )
    # bit-identical on one machine; 1e-4 voxels leaves room for another CPU's float rounding, not for a change
    np.testing.assert_allclose(got["sample"], ref["sample"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got["stats"], ref["stats"], rtol=0, atol=1e-5)


def _phantom_pair(tmp_path):
    import numpy as np

    from common.data.cardiac import load_cardiac_stats, render_cardiac_phantom
    from common.data.cardiac.prepare import phantom_subject
    from common.io.nifti import write_nifti

    _, params = phantom_subject("test", 0, seed=0)
    r = render_cardiac_phantom(params, load_cardiac_stats())
    aff = np.diag([1.5, 1.5, 1.0, 1.0])
    names = {"moving": "ed", "fixed": "es", "moving_label": "ed_gt", "fixed_label": "es_gt"}
    keys = {"moving": "ed_image", "fixed": "es_image", "moving_label": "ed_label", "fixed_label": "es_label"}
    return {k: write_nifti(np.asarray(r[keys[k]]), aff, tmp_path / f"{names[k]}.nii.gz") for k in names}
