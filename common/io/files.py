"""Small file utilities shared by data preparation, weight export and release packaging."""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256sum"]


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (read in ``chunk``-byte blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
