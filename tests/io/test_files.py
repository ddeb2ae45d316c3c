"""File-name helpers: image stems and pair output folder names."""

from __future__ import annotations

import pytest

from common.io.files import image_stem, pair_output_name


@pytest.mark.parametrize(
    "path, stem",
    [("a/b/sub-01_T1w.nii.gz", "sub-01_T1w"), ("x.nii", "x"), ("y.mha", "y"), ("z.nrrd", "z"), ("w.txt", "w.txt"),
     (".nii.gz", ".nii.gz")],
)  # fmt: skip
def test_image_stem(path, stem):
    assert image_stem(path) == stem


def test_pair_output_name_from_stems_or_a_sanitised_id():
    pair = {"moving_image": "/d/m01.nii.gz", "fixed_image": "/d/f02.mha"}
    assert pair_output_name(pair) == "m01_to_f02"
    assert pair_output_name(pair, "case 7/left") == "case_7_left"
    assert pair_output_name(pair, "") == "m01_to_f02"
