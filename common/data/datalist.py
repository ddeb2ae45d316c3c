"""Reading datalist JSON files (``{"training": [...], "validation": [...], "test": [...]}``) with paths
relative to the file's folder, for any keys (MONAI's ``load_decathlon_datalist`` only resolves ``image`` and
``label``; pair datalists use ``moving_image``, ``fixed_label``, ...)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["load_datalist"]

_SUFFIXES = (".nii", ".nii.gz", ".mha", ".nrrd", ".npz", ".png")


def load_datalist(
    path: str | os.PathLike, section: str, base_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """Entries of ``section`` with relative file paths resolved against ``base_dir`` (default: the JSON's folder).

    Raises:
        FileNotFoundError: the JSON is missing. ValueError: not JSON, or ``section`` missing/empty/not a list of dicts.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: datalist not found (run scripts/prepare_data.py first?).")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc}).") from exc
    if not isinstance(data, dict) or section not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{p}: no section {section!r} (found: {keys}).")
    items = data[section]
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"{p}: section {section!r} must be a non-empty list of objects.")
    base = Path(base_dir) if base_dir is not None else p.parent
    out = []
    for item in items:
        resolved = {}
        for k, v in item.items():
            if isinstance(v, str) and v.endswith(_SUFFIXES) and not os.path.isabs(v):
                v = str((base / v).resolve())
            resolved[k] = v
        out.append(resolved)
    return out
