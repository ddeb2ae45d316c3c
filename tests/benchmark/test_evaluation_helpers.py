"""common.evaluation's table helpers (the study scripts import them from the library, not through sys.path)."""

from __future__ import annotations

import csv

from common.evaluation import BUNDLES_DIR, method_rows, summary_cell


def test_method_rows_and_summary_cell(tmp_path):
    with open(tmp_path / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["pair", "method", "dice_mean", "seconds", "dice_per_label"])
        w.writeheader()
        w.writerow({"pair": "a", "method": "bundle", "dice_mean": "0.7", "seconds": "", "dice_per_label": "{}"})
        w.writerow({"pair": "b", "method": "bundle", "dice_mean": "0.8", "seconds": "2", "dice_per_label": "{}"})
        w.writerow({"pair": "a", "method": "zero", "dice_mean": "0.5", "seconds": "0", "dice_per_label": "{}"})
    rows = method_rows(tmp_path / "summary.md", "bundle")
    assert rows == [{"dice_mean": 0.7}, {"dice_mean": 0.8, "seconds": 2.0}]
    assert summary_cell(rows, "dice_mean").startswith("0.750")
    assert summary_cell(rows, "hd95_mean") == "not measured"


def test_bundles_dir_holds_the_shipped_bundles():
    assert (BUNDLES_DIR / "brain_mri_lumir_cascade" / "configs" / "inference.json").is_file()


def test_score_field_zero_and_shifted(tmp_path):
    import nibabel as nib
    import numpy as np
    import torch

    from common.evaluation import score_field

    labels = np.zeros((12, 12, 12), np.int16)
    labels[3:9, 3:9, 3:9] = 1
    labels[3:9, 3:9, 9:11] = 2
    for name in ("moving", "fixed"):
        nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / f"{name}.nii.gz")
    pair = {"moving_label": str(tmp_path / "moving.nii.gz"), "fixed_label": str(tmp_path / "fixed.nii.gz")}
    zero = score_field(torch.zeros(1, 3, 12, 12, 12), pair, np.eye(4), np.eye(4))
    assert zero == {"dice": 1.0, "sdlogj": 0.0, "folding_percent": 0.0, "ndv_percent": 0.0}
    shift = torch.zeros(1, 3, 12, 12, 12)
    shift[:, 0] = 2.0  # two voxels along the first axis: overlap drops, still no folding
    moved = score_field(shift, pair, np.eye(4), np.eye(4))
    assert 0.3 < moved["dice"] < 0.8 and moved["folding_percent"] == 0.0
