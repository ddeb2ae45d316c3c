"""Copy the shared config fragments of ``bundles/_shared/`` into the bundles that carry them (``shared.json``).

Usage::

    python scripts/sync_bundle_configs.py            # copy; prints what changed
    python scripts/sync_bundle_configs.py --check    # exit 1 naming every bundle copy that differs
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fire

SHARED = Path(__file__).resolve().parents[1] / "bundles" / "_shared"


def differing(shared: Path = SHARED) -> list[tuple[Path, Path]]:
    """(canonical file, bundle copy) for every bundle copy that is missing or not byte-identical."""
    listing = json.loads((shared / "shared.json").read_text())
    out = []
    for name, bundles in listing.items():
        source = shared / name
        for bundle in bundles:
            copy = shared.parent / bundle / "configs" / name
            if not copy.is_file() or copy.read_bytes() != source.read_bytes():
                out.append((source, copy))
    return out


def main(check: bool = False, shared: str = str(SHARED)) -> None:
    """Copy (or with ``check`` only list) the shared fragments that differ in a bundle."""
    todo = differing(Path(shared))
    for source, copy in todo:
        if check:
            print(f"{copy}: differs from {source} (run python scripts/sync_bundle_configs.py)")
        else:
            shutil.copyfile(source, copy)
            print(f"{copy}: updated from {source}")
    if check and todo:
        raise SystemExit(1)


if __name__ == "__main__":
    fire.Fire(main)
