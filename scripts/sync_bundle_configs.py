"""Copy the shared config fragments of ``bundles/_shared/`` into the bundles that carry them.

Two kinds of fragment:

- whole files listed in ``shared.json`` (``{file name: [bundle, ...]}``), copied byte for byte into each bundle's
  ``configs/``;
- ``*.fragment.json``: ``{"config": "train.json", "bundles": [...], "ids": {config id: value}}``, the values that
  several bundles' configs hold word for word (ids in MONAI's ``a#b`` form); each id is set in each bundle's config,
  the rest of the config is left alone.

Usage::

    python scripts/sync_bundle_configs.py            # copy; prints what changed
    python scripts/sync_bundle_configs.py --check    # exit 1 naming every bundle copy that differs
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import fire

SHARED = Path(__file__).resolve().parents[1] / "bundles" / "_shared"


def _get(config: dict, config_id: str) -> Any:
    node: Any = config
    for part in config_id.split("#"):
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


def _set(config: dict, config_id: str, value: Any) -> None:
    *parents, last = config_id.split("#")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _same(a: Any, b: Any) -> bool:
    if a is KeyError or b is KeyError:  # an id missing from one side
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def differing(shared: Path = SHARED) -> list[tuple[Path, Path, list[str]]]:
    """(canonical file, bundle copy, differing ids) for every bundle copy that is missing or differs; the id list is
    empty for a whole-file copy."""
    listing = json.loads((shared / "shared.json").read_text())
    out = []
    for name, bundles in listing.items():
        source = shared / name
        for bundle in bundles:
            copy = shared.parent / bundle / "configs" / name
            if not copy.is_file() or copy.read_bytes() != source.read_bytes():
                out.append((source, copy, []))
    for source in sorted(shared.glob("*.fragment.json")):
        fragment = json.loads(source.read_text())
        for bundle in fragment["bundles"]:
            copy = shared.parent / bundle / "configs" / fragment["config"]
            config = json.loads(copy.read_text()) if copy.is_file() else {}
            ids = [i for i, v in fragment["ids"].items() if not _same(_get(config, i), v)]
            if ids:
                out.append((source, copy, ids))
    return out


def _repair(source: Path, copy: Path, ids: list[str]) -> None:
    if not ids:
        shutil.copyfile(source, copy)
        return
    values = json.loads(source.read_text())["ids"]
    config = json.loads(copy.read_text())
    for i in ids:
        _set(config, i, values[i])
    copy.write_text(json.dumps(config, indent=4) + "\n")


def main(check: bool = False, shared: str = str(SHARED)) -> None:
    """Copy (or with ``check`` only list) the shared fragments that differ in a bundle."""
    todo = differing(Path(shared))
    for source, copy, ids in todo:
        what = f" ({', '.join(ids)})" if ids else ""
        if check:
            print(f"{copy}: differs from {source}{what} (run python scripts/sync_bundle_configs.py)")
        else:
            _repair(source, copy, ids)
            print(f"{copy}: updated from {source}{what}")
    if check and todo:
        raise SystemExit(1)


if __name__ == "__main__":
    fire.Fire(main)
