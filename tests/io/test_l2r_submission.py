"""Learn2Reg / LUMIR submission: case ids from image names, collecting per-pair disp.nii.gz files, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.io.l2r import collect_submission, l2r_case_id, read_l2r_displacement, write_l2r_displacement

SHAPE = (6, 5, 4)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/data/LUMIR/imagesVal/LUMIRMRI_3455_0000.nii.gz", "3455"),
        ("OASIS_0395_0000.nii.gz", "0395"),
        ("imagesTr/Some_Long_Prefix_0001_0002.nii.gz", "0001"),
        ("3455_0000.nii.gz", "3455"),
        ("LUMIRMRI_3455_0000.nii", "LUMIRMRI_3455_0000"),  # not the scorers' .nii.gz pattern
        ("LUMIRMRI_345_0000.nii.gz", "LUMIRMRI_345_0000"),
        ("sub-01_T1w.nii.gz", "sub-01_T1w"),
        ("/x/case7.mha", "case7"),
        (Path("/x/scan.nrrd"), "scan"),
        ("noext", "noext"),
    ],
)
def test_l2r_case_id(path, expected):
    assert l2r_case_id(path) == expected


def test_l2r_case_id_matches_the_scorers_slice():
    for name in ("LUMIRMRI_3455_0000.nii.gz", "OASIS_0395_0000.nii.gz"):
        assert l2r_case_id(name) == name[-16:-12]


def test_l2r_case_id_rejects_empty_name():
    with pytest.raises(ValueError, match="l2r_case_id: `path` has no file name"):
        l2r_case_id("")


def _field(seed: int) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(1, 3, *SHAPE)), dtype=torch.float32)


def pair_folder(out: Path, name: str, moving: str, fixed: str, seed: int = 0, disp: bool = True) -> Path:
    """A pair folder as SaveRegistrationOutputsd writes it: disp.nii.gz + metrics.json with the input paths."""
    folder = out / name
    folder.mkdir(parents=True)
    if disp:
        write_l2r_displacement(_field(seed), folder / "disp.nii.gz")
    pair = {"moving_image": f"/data/imagesVal/{moving}", "fixed_image": f"/data/imagesVal/{fixed}"}
    (folder / "metrics.json").write_text(json.dumps({"pair": pair, "metrics": {"dice_mean": 0.5}, "outputs": {}}))
    return folder


def lumir_outputs(out: Path) -> Path:
    pair_folder(out, "3454_to_3455", "LUMIRMRI_3454_0000.nii.gz", "LUMIRMRI_3455_0000.nii.gz", seed=1)
    pair_folder(out, "3456_to_3457", "LUMIRMRI_3456_0000.nii.gz", "LUMIRMRI_3457_0000.nii.gz", seed=2)
    return out


def test_collect_submission_names_and_content(tmp_path):
    out = lumir_outputs(tmp_path / "outputs")
    hidden = pair_folder(out, ".3458_to_3459.partial-123", "LUMIRMRI_3458_0000.nii.gz", "LUMIRMRI_3459_0000.nii.gz")
    (out / "notes").mkdir()  # a folder without metrics.json is not a pair
    (out / "summary.json").write_text("{}")
    written = collect_submission(out, tmp_path / "submission")
    sub = tmp_path / "submission"
    assert written == [sub / "disp_3455_3454.nii.gz", sub / "disp_3457_3456.nii.gz"]  # disp_<fixed>_<moving>
    assert sorted(p.name for p in sub.iterdir()) == ["disp_3455_3454.nii.gz", "disp_3457_3456.nii.gz"]
    for path, src in zip(written, ("3454_to_3455", "3456_to_3457")):
        assert path.read_bytes() == (out / src / "disp.nii.gz").read_bytes()
        torch.testing.assert_close(read_l2r_displacement(path), read_l2r_displacement(out / src / "disp.nii.gz"))
    torch.testing.assert_close(read_l2r_displacement(written[1]), _field(2))
    assert (hidden / "disp.nii.gz").is_file()  # skipped, not removed


def test_collect_submission_overwrite(tmp_path):
    out = lumir_outputs(tmp_path / "outputs")
    sub = tmp_path / "submission"
    collect_submission(out, sub)
    with pytest.raises(FileExistsError, match=r"collect_submission: .*disp_3455_3454.nii.gz: exists"):
        collect_submission(out, sub)
    write_l2r_displacement(_field(7), out / "3454_to_3455" / "disp.nii.gz")  # a newer run
    written = collect_submission(out, sub, overwrite=True)
    torch.testing.assert_close(read_l2r_displacement(written[0]), _field(7))
    assert not [p for p in sub.iterdir() if p.name.startswith(".")]  # no temp files left


def test_collect_submission_existing_target_copies_nothing(tmp_path):
    out = lumir_outputs(tmp_path / "outputs")
    sub = tmp_path / "submission"
    sub.mkdir()
    (sub / "disp_3457_3456.nii.gz").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="disp_3457_3456.nii.gz"):
        collect_submission(out, sub)
    assert [p.name for p in sub.iterdir()] == ["disp_3457_3456.nii.gz"]  # disp_3455_3454 was not written first


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("no_output_dir", ValueError, r"collect_submission: .*outputs: output folder not found"),
        ("no_pairs", ValueError, r"collect_submission: .*outputs: no pair folders"),
        ("only_hidden", ValueError, r"collect_submission: .*outputs: no pair folders"),
        ("no_disp", ValueError, r"collect_submission: .*3456_to_3457: has metrics.json but no disp.nii.gz"),
        ("clash", ValueError, r"collect_submission: .*3454_to_3455 and .*copy_of_3454.*both map to disp_3455_3454"),
        ("bad_metrics", ValueError, r"collect_submission: .*3456_to_3457.metrics.json: no 'pair' object"),
        ("broken_metrics", ValueError, r"collect_submission: .*3456_to_3457.metrics.json: not a readable JSON"),
        ("bad_id", ValueError, r"collect_submission: .*odd.metrics.json: cannot name the submission file"),
        ("submission_is_file", ValueError, r"collect_submission: .*submission: submission path exists and is not"),
    ],
)
def test_collect_submission_errors(tmp_path, case, error, match):
    out = tmp_path / "outputs"
    sub = tmp_path / "submission"
    if case != "no_output_dir":
        out.mkdir()
    if case == "only_hidden":
        pair_folder(out, ".3454_to_3455.partial-9", "LUMIRMRI_3454_0000.nii.gz", "LUMIRMRI_3455_0000.nii.gz")
    elif case in ("no_disp", "bad_metrics", "broken_metrics"):
        pair_folder(out, "3454_to_3455", "LUMIRMRI_3454_0000.nii.gz", "LUMIRMRI_3455_0000.nii.gz")
        second = pair_folder(out, "3456_to_3457", "LUMIRMRI_3456_0000.nii.gz", "LUMIRMRI_3457_0000.nii.gz",
                             disp=case != "no_disp")  # fmt: skip
        if case == "bad_metrics":
            (second / "metrics.json").write_text(json.dumps({"pair": {"moving_image": "a.nii.gz"}}))
        elif case == "broken_metrics":
            (second / "metrics.json").write_text("{truncated")
    elif case == "clash":
        pair_folder(out, "3454_to_3455", "LUMIRMRI_3454_0000.nii.gz", "LUMIRMRI_3455_0000.nii.gz")
        pair_folder(out, "copy_of_3454", "LUMIRMRI_3454_0000.nii.gz", "LUMIRMRI_3455_0000.nii.gz")
    elif case == "bad_id":
        pair_folder(out, "odd", "my scan.nii.gz", "LUMIRMRI_3455_0000.nii.gz")
    elif case == "submission_is_file":
        lumir_outputs(out)
        sub.write_bytes(b"")
    with pytest.raises(error, match=match):
        collect_submission(out, sub)
    if case != "submission_is_file":
        assert not sub.exists()  # all-or-nothing: nothing copied before the error
