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
