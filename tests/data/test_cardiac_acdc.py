"""ACDC reader on a generated look-alike tree (tiny volumes, real layout and file names)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.cardiac import (
    PAIR_KEYS,
    AcdcLayoutError,
    acdc_slice_pairs,
    extract_slices,
    find_acdc_patients,
    load_acdc_patient,
    prepare_acdc_dataset,
    read_info_cfg,
    split_patients,
)
from common.io.nifti import ImageReadError, read_nifti

SPACING = (1.5625, 1.5625, 10.0)
SHAPE = (40, 36, 4)
GROUPS = ("NOR", "DCM", "HCM")


def _labels(lv_radius: float, centre: tuple[float, float]) -> np.ndarray:
    """Slice 0: LV + myocardium only; slices 1-2: all three labels; slice 3: empty."""
    i, j = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE[:2], SPACING[:2])), indexing="ij")
    rho = np.hypot(i - centre[0], j - centre[1])
    lab2d = np.zeros(SHAPE[:2], np.uint8)
    lab2d[(rho < lv_radius + 12) & (j < centre[1] - lv_radius - 2)] = 1  # RV on one side
    lab2d[rho < lv_radius + 6] = 2
    lab2d[rho < lv_radius] = 3
    lab = np.zeros(SHAPE, np.uint8)
    lab[..., 0] = np.where(lab2d == 1, 0, lab2d)
    lab[..., 1] = lab[..., 2] = lab2d
    return lab


def _image(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    levels = np.array([150.0, 600.0, 200.0, 700.0])
    return (levels[label] + rng.normal(0, 20, label.shape)).astype(np.int16)


def _save(array: np.ndarray, path: Path, spacing: tuple[float, ...] = SPACING) -> None:
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def make_acdc_tree(root: Path, n_train: int = 6, n_test: int = 2, seed: int = 0) -> Path:
    """Write an ACDC-like tree: Info.cfg, ED/ES frames, _gt labels and a 4d file per patient."""
    rng = np.random.default_rng(seed)
    for subset, ids in (("training", range(1, n_train + 1)), ("testing", range(101, 101 + n_test))):
        for k in ids:
            pid = f"patient{k:03d}"
            folder = root / subset / pid
            folder.mkdir(parents=True)
            ed, es = 1, 8 + k % 4
            group = GROUPS[k % len(GROUPS)]
            (folder / "Info.cfg").write_text(
                f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 175.0\nNbFrame: 15\nWeight: 80.0\n"
            )
            centre = (30.0 + k % 6, 32.0)
            frames = {ed: _labels(16.0, centre), es: _labels(11.0, centre)}
            for frame, lab in frames.items():
                _save(_image(lab, rng), folder / f"{pid}_frame{frame:02d}.nii.gz")
                _save(lab, folder / f"{pid}_frame{frame:02d}_gt.nii.gz")
            cine = np.stack([_image(frames[ed], rng)] * 3, axis=-1)
            nib.save(nib.Nifti1Image(cine, np.diag([*SPACING, 1.0])), str(folder / f"{pid}_4d.nii.gz"))
    return root


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return make_acdc_tree(tmp_path / "ACDC")


def test_read_info_cfg(tree: Path) -> None:
    info = read_info_cfg(tree / "training" / "patient002" / "Info.cfg")
    assert info == {"ED": 1, "ES": 10, "Group": "HCM", "Height": 175.0, "NbFrame": 15, "Weight": 80.0}


@pytest.mark.parametrize(
    "text, match",
    [
        ("ED: 1\nGroup: NOR\n", r"missing key\(s\) \['ES'\]"),
        ("ED: 1\nES: twelve\n", "ES is not a number"),
        ("ED: 1\nES 12\n", "line 2 is not 'Key: value'"),
    ],
)
def test_read_info_cfg_bad(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "Info.cfg"
    path.write_text(text)
    with pytest.raises(AcdcLayoutError, match=match):
        read_info_cfg(path)


def test_find_patients(tree: Path) -> None:
    patients = find_acdc_patients(tree)
    assert [p.id for p in patients] == [f"patient{k:03d}" for k in (1, 2, 3, 4, 5, 6, 101, 102)]
    p = patients[2]
    assert (p.subset, p.ed, p.es, p.group, p.n_frames) == ("training", 1, 11, "NOR", 15)
    assert p.ed_image.name == "patient003_frame01.nii.gz" and p.es_label.name == "patient003_frame11_gt.nii.gz"
    assert p.cine is not None and p.cine.name == "patient003_4d.nii.gz"
    assert read_nifti(p.cine, ndim=4)[0].shape == (*SHAPE, 3)
    # a subset folder as root works too
    assert [p.id for p in find_acdc_patients(tree / "testing")] == ["patient101", "patient102"]


@pytest.mark.parametrize(
    "breakage, match",
    [
        (lambda f: (f / "Info.cfg").unlink(), r"patient002/Info\.cfg: file not found"),
        (
            lambda f: (f / "patient002_frame10.nii.gz").unlink(),
            r"patient002_frame10\.nii\.gz: ES frame file not found",
        ),
        (
            lambda f: (f / "patient002_frame01_gt.nii.gz").unlink(),
            r"patient002_frame01_gt\.nii\.gz: ED label file",
        ),
    ],
)
def test_find_patients_bad_layout(tree: Path, breakage, match: str) -> None:
    breakage(tree / "training" / "patient002")
    with pytest.raises(AcdcLayoutError, match=match):
        find_acdc_patients(tree)


def test_find_patients_empty(tmp_path: Path) -> None:
    with pytest.raises(AcdcLayoutError, match="no patientNNN folders"):
        find_acdc_patients(tmp_path)
    with pytest.raises(AcdcLayoutError, match="folder not found"):
        find_acdc_patients(tmp_path / "nope")


@pytest.mark.parametrize(
    "label, spacing, match",
    [
        (
            np.zeros((40, 30, 4), np.uint8),
            SPACING,
            r"patient001_frame01_gt\.nii\.gz: label geometry \(shape \(40, 30, 4\)",
        ),
        (np.zeros(SHAPE, np.uint8), (1.0, 1.0, 10.0), r"patient001_frame01_gt\.nii\.gz: label geometry"),
        (np.full(SHAPE, 7, np.uint8), SPACING, r"patient001_frame01_gt\.nii\.gz: label values \[7\]"),
    ],
)
def test_load_bad_labels(tree: Path, label: np.ndarray, spacing: tuple, match: str) -> None:
    _save(label, tree / "training" / "patient001" / "patient001_frame01_gt.nii.gz", spacing)
    with pytest.raises(AcdcLayoutError, match=match):
        load_acdc_patient(find_acdc_patients(tree)[0])


def test_load_truncated_file(tree: Path) -> None:
    path = tree / "training" / "patient001" / "patient001_frame09.nii.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ImageReadError, match="patient001_frame09.nii.gz"):
        load_acdc_patient(find_acdc_patients(tree)[0])


def test_load_resamples_inplane(tree: Path) -> None:
    frames = load_acdc_patient(find_acdc_patients(tree)[0], spacing_mm=1.5)
    expected = (round(40 * 1.5625 / 1.5), round(36 * 1.5625 / 1.5), 4)
    assert frames["ed_image"].shape == frames["es_label"].shape == expected
    assert frames["ed_image"].dtype == np.float32 and frames["ed_label"].dtype == np.uint8
    native = load_acdc_patient(find_acdc_patients(tree)[0], spacing_mm=None)
    assert native["ed_label"].shape == SHAPE
    # the LV area in mm^2 is kept by the resampling (nearest neighbour, aligned grids)
    area = (frames["ed_label"][..., 1] == 3).sum() * 1.5**2
    area_native = (native["ed_label"][..., 1] == 3).sum() * 1.5625**2
    assert area == pytest.approx(area_native, rel=0.1)


@pytest.mark.parametrize("size, center", [(24, "label"), (112, "label"), (32, "image")])
def test_extract_slices(tree: Path, size: int, center: str) -> None:
    frames = load_acdc_patient(find_acdc_patients(tree)[3])
    slices = extract_slices(frames, size=size, center=center)
    assert [s["slice"] for s in slices] == [1, 2]  # slice 0 lacks the RV, slice 3 is empty
    for s in slices:
        for ph in ("ed", "es"):
            img, lab = s[f"{ph}_image"], s[f"{ph}_label"]
            assert img.shape == lab.shape == (size, size)
            assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
            assert img.max() == 1.0 and img.min() == 0.0
            assert set(np.unique(lab)) == {0, 1, 2, 3}
            # the bright LV cavity is bright after normalisation, the myocardium dark
            assert img[lab == 3].mean() > 0.7 > 0.4 > img[lab == 2].mean()
        if center == "label":
            union = (s["ed_label"] > 0) | (s["es_label"] > 0)
            centroid = np.argwhere(union).mean(axis=0)
            assert np.abs(centroid - (size - 1) / 2).max() <= 1.0
        if size == 112:  # the crop holds the whole slice: no label voxel lost
            full = frames["ed_label"][..., s["slice"]]
            assert all((s["ed_label"] == k).sum() == (full == k).sum() for k in (1, 2, 3))


def test_same_crop_for_both_frames(tree: Path) -> None:
    """The ED and ES crops share one box: the LV centre (same in both frames here) stays put."""
    frames = load_acdc_patient(find_acdc_patients(tree)[0])
    for s in extract_slices(frames, size=24):
        c_ed = np.argwhere(s["ed_label"] == 3).mean(axis=0)
        c_es = np.argwhere(s["es_label"] == 3).mean(axis=0)
        assert np.abs(c_ed - c_es).max() < 0.6


def test_extract_slices_bad_center(tree: Path) -> None:
    frames = load_acdc_patient(find_acdc_patients(tree)[0])
    with pytest.raises(ValueError, match="center must be 'label' or 'image'"):
        extract_slices(frames, center="heart")


def test_pairs_both_directions(tree: Path) -> None:
    pairs = acdc_slice_pairs(find_acdc_patients(tree)[0], size=24)
    assert [p["id"] for p in pairs] == [
        "patient001_s01_ED-ES",
        "patient001_s01_ES-ED",
        "patient001_s02_ED-ES",
        "patient001_s02_ES-ED",
    ]
    fwd, bwd = pairs[0], pairs[1]
    assert set(fwd) == set(PAIR_KEYS)
    assert fwd["moving_image"].shape == (1, 24, 24) and fwd["moving_label"].dtype == np.uint8
    np.testing.assert_array_equal(fwd["moving_image"], bwd["fixed_image"])
    np.testing.assert_array_equal(fwd["fixed_label"], bwd["moving_label"])
    # ED (moving of ED->ES) has the larger LV cavity
    assert (fwd["moving_label"] == 3).sum() > (fwd["fixed_label"] == 3).sum()


@pytest.mark.parametrize("n_folds", [2, 3])
def test_split_patients_no_leak(tree: Path, n_folds: int) -> None:
    patients = [p for p in find_acdc_patients(tree) if p.subset == "training"]
    vals = []
    for fold in range(n_folds):
        train, val = split_patients(patients, n_folds=n_folds, fold=fold, seed=3)
        assert not {p.id for p in train} & {p.id for p in val}
        assert {p.id for p in train} | {p.id for p in val} == {p.id for p in patients}
        vals.append({p.id for p in val})
    assert set().union(*vals) == {p.id for p in patients} and sum(len(v) for v in vals) == len(patients)
    if n_folds == 2:  # stratified: each group (2 patients each) is split across the folds
        assert all(len({p.group for p in patients if p.id in v}) == 3 for v in vals)


def test_split_patients_seeded() -> None:
    ids = [f"patient{k:03d}" for k in range(1, 41)]
    assert split_patients(ids, 5, 1, seed=0) == split_patients(ids, 5, 1, seed=0)
    assert split_patients(ids, 5, 1, seed=0)[1] != split_patients(ids, 5, 1, seed=1)[1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_folds": 1}, "n_folds >= 2"),
        ({"n_folds": 3, "fold": 3}, "0 <= fold < n_folds"),
        ({"n_folds": 9}, "cannot fill 9 folds"),
    ],
)
def test_split_patients_bad(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_patients([f"p{k}" for k in range(4)], **kwargs)


def test_prepare_acdc_dataset(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    path = prepare_acdc_dataset(tree, out, n_folds=3, fold=0, size=24, progress=False)
    datalist = json.loads(path.read_text())
    subjects = {k: {e["id"].split("_")[0] for e in v} for k, v in datalist.items()}
    assert subjects["test"] == {"patient101", "patient102"}
    assert len(subjects["validation"]) == 2 and len(subjects["training"]) == 4
    assert not subjects["training"] & subjects["validation"] and not subjects["training"] & subjects["test"]
    assert len(datalist["training"]) == 4 * 2 * 2  # patients x slices x directions
    entry = datalist["validation"][0]
    assert set(entry) == set(PAIR_KEYS)
    img, _ = read_nifti(out / entry["moving_image"], ndim=2)
    lab, _ = read_nifti(out / entry["moving_label"], ndim=2, dtype=None)
    assert img.shape == (24, 24) and lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1, 2, 3}
    # resume: nothing is rewritten
    stamp = (out / entry["moving_image"]).stat().st_mtime_ns
    assert (
        json.loads(prepare_acdc_dataset(tree, out, n_folds=3, fold=0, size=24, progress=False).read_text()) == datalist
    )
    assert (out / entry["moving_image"]).stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="prepare_config.json was written with other settings"):
        prepare_acdc_dataset(tree, out, n_folds=3, fold=1, size=24, progress=False)
