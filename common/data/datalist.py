"""Reading datalist JSON files (``{"training": [...], "validation": [...], "test": [...]}``) with paths
relative to the file's folder, for any keys (MONAI's ``load_decathlon_datalist`` only resolves ``image`` and
``label``; pair datalists use ``moving_image``, ``fixed_label``, ...)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["load_datalist", "read_json_file", "resolve_entry", "is_file", "write_json", "check_prepare_config"]

_SUFFIXES = (".nii", ".nii.gz", ".mha", ".nrrd", ".npz", ".png")


def read_json_file(path: str | os.PathLike, caller: str) -> Any:
    """Parse a JSON file; every failure (bad UTF-8, invalid or absurdly nested JSON, huge integers) becomes a
    ``ValueError`` naming the file. Raises ``FileNotFoundError`` naming it when missing."""
    p = Path(path)
    if not is_file(p):
        raise FileNotFoundError(f"{caller}: {p}: file not found.")
    try:
        return json.loads(p.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise ValueError(f"{caller}: {p}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]}).") from exc


def is_file(path: Path) -> bool:
    """``path.is_file()`` that answers False (instead of raising) for NUL bytes or over-long names."""
    try:
        return path.is_file()
    except (ValueError, OSError):
        return False


def resolve_entry(base: Path, value: str, source: Path, caller: str) -> Path:
    """``(base / value).resolve()`` with a ``ValueError`` naming the JSON file for unusable path strings."""
    try:
        return (base / value).resolve()
    except (ValueError, OSError) as exc:
        raise ValueError(f"{caller}: {source}: entry path {value[:80]!r} is not a usable path ({exc}).") from exc


def load_datalist(
    path: str | os.PathLike, section: str, base_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """Entries of ``section`` with relative file paths resolved against ``base_dir`` (default: the JSON's folder).

    Raises:
        FileNotFoundError: the JSON is missing. ValueError: not JSON, or ``section`` missing/empty/not a list of dicts.
    """
    p = Path(path)
    if not is_file(p):
        raise FileNotFoundError(f"{p}: datalist not found (run scripts/prepare_data.py first?).")
    data = read_json_file(p, "load_datalist")
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
                v = str(resolve_entry(base, v, p, "load_datalist"))
            resolved[k] = v
        out.append(resolved)
    return out


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as JSON atomically (temp file + rename)."""
    from common.io.nifti import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def check_prepare_config(
    folder: Path, config: dict[str, Any], caller: str, hint: str = "use another out_dir or delete the old one."
) -> None:
    """Resumable preparation: record ``config`` in ``folder/prepare_config.json`` on the first run; on later runs
    refuse (``ValueError`` naming the file and the differing settings) if the settings changed."""
    path = Path(folder) / "prepare_config.json"
    if is_file(path):
        old = read_json_file(path, caller)
        if old != config:
            diff = {k: (old.get(k), config.get(k)) for k in set(old) | set(config) if old.get(k) != config.get(k)}
            raise ValueError(f"{caller}: {path} was written with other settings {diff} (old, new); {hint}")
    else:
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_json(config, path)
