"""Small file utilities shared by data preparation, weight export and release packaging."""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256sum", "IMAGE_SUFFIXES", "image_stem", "pair_output_name"]


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (read in ``chunk``-byte blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


def image_stem(path: str | os.PathLike) -> str:
    """File name without its image extension (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``); other names unchanged."""
    name = os.path.basename(os.fspath(path))
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def pair_output_name(paths: dict[str, str], pair_id: str | None = None) -> str:
    """Output folder name of a registration pair: the datalist entry's ``id`` when given (characters other than
    letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``), else ``<moving stem>_to_<fixed stem>``."""
    if pair_id:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(pair_id))
    return f"{image_stem(paths['moving_image'])}_to_{image_stem(paths['fixed_image'])}"
