"""Download a released bundle by name from a release index (``model_info.json`` written by ``scripts/release.py``)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from monai.bundle import download_large_files

__all__ = ["BundleDownloadError", "download_bundle"]


class BundleDownloadError(ValueError):
    """A download that cannot go ahead: the message names the URL, file or bundle and the problem."""


def download_bundle(name: str, index: str, bundle_dir: str | Path, version: str | None = None) -> Path:
    """Download released bundle ``name`` (newest or ``version``) from a release index into ``bundle_dir/name``.

    The zip must match the index's sha256 and hold only ``name/...`` paths; its weights come through MONAI's
    ``download_large_files`` (sha256 checked). On any failure nothing is left behind.

    Raises:
        BundleDownloadError: one line naming the URL, file or bundle and the problem.
    """
    try:
        with urllib.request.urlopen(index, timeout=60) as resp:
            entries = json.loads(resp.read().decode())
    except (OSError, ValueError) as exc:
        raise BundleDownloadError(f"{index}: cannot read the bundle index ({type(exc).__name__}: {exc}).") from None
    found = {k.rsplit("_v", 1)[1]: v for k, v in entries.items() if k.rsplit("_v", 1)[0] == name}
    if not found:
        known = sorted({k.rsplit("_v", 1)[0] for k in entries})
        raise BundleDownloadError(f"{index}: no bundle named {name!r} (index lists: {', '.join(known) or 'none'}).")

    def key(v: str) -> tuple:
        return tuple(int(p) if p.isdigit() else 0 for p in v.split("."))

    version = version or max(found, key=key)
    if version not in found:
        raise BundleDownloadError(
            f"{index}: {name} has no version {version} (versions: {', '.join(sorted(found, key=key))})."
        )
    entry = found[version]
    target = Path(bundle_dir) / name
    if target.exists():
        raise BundleDownloadError(f"{target}: exists; remove it or choose another --bundle_dir.")
    with tempfile.TemporaryDirectory() as tmp:
        zpath = Path(tmp) / "bundle.zip"
        try:
            urllib.request.urlretrieve(entry["source"], zpath)
        except OSError as exc:
            raise BundleDownloadError(f"{entry['source']}: download failed ({exc}).") from None
        digest = hashlib.sha256(zpath.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            raise BundleDownloadError(
                f"{entry['source']}: sha256 {digest} differs from the index's {entry['sha256']}; refused."
            )
        with zipfile.ZipFile(zpath) as zf:
            bad = [n for n in zf.namelist() if not n.startswith(f"{name}/") or ".." in Path(n).parts]
            if bad:
                raise BundleDownloadError(f"{entry['source']}: unexpected paths in the zip ({bad[0]}); refused.")
            zf.extractall(tmp)
        Path(bundle_dir).mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(tmp) / name), str(target))
    try:
        download_large_files(bundle_path=str(target))  # weights, sha256 checked by MONAI
    except Exception as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise BundleDownloadError(
            f"{name}: weights download failed or did not match their sha256 ({exc}); nothing kept."
        ) from None
    print(f"{name} {version}: {target}")
    return target
