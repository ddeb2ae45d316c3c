"""Package bundles for download the way MONAI expects.

For each bundle it writes, into ``--out``:

* ``<name>_v<version>.zip`` with a top-level ``<name>/`` folder (configs, docs, LICENSE, large_files.yml) and
  without the weights, which MONAI fetches separately with ``download_large_files``;
* ``<name>_v<version>_model.pt``: the weights, whose URL and sha256 go into the zipped ``large_files.yml``;
* the project's ``common`` package inside the zip (``<name>/common/``): MONAI puts the bundle folder on
  ``sys.path`` before it runs a workflow, so ``$import common`` in the configs finds this copy and the bundle runs
  with public packages only (no clone of this repository, no ``pip install`` of it). The repository keeps one
  copy of the code; only the release assembles it. ``metadata.json``'s ``required_packages_version`` then lists
  the real runtime requirements (this project's ``pyproject.toml`` dependencies at their installed versions)
  instead of the uninstallable ``monai-registration-zoo``;
* ``model_info.json``: an index ``{"<name>_v<version>": {"version", "source", "sha256", "weights_url",
  "weights_sha256", "weights_trained"}}``.

A user then runs::

    python -m monai.bundle download --name <name> --url <base_url>/<name>_v<version>.zip --bundle_dir bundles_dl
    python -m monai.bundle download_large_files --bundle_path bundles_dl/<name>

and MONAI refuses weights whose sha256 differs from the recorded one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import fire

from common.io.files import sha256sum as sha256
from common.io.nifti import atomic_path

ROOT = Path(__file__).resolve().parents[1]

SKIP_DIRS = {"runs", "eval", "models", "__pycache__", ".ipynb_checkpoints"}
# the bundle's own fields name these two; the project itself is replaced by the vendored `common`
OWN_FIELDS = {"monai", "torch", "numpy"}


def runtime_requirements() -> dict[str, str]:
    """``{distribution: installed version}`` of the project's runtime dependencies (``pyproject.toml``), except
    monai, torch and numpy (``metadata.json`` has fields of their own)."""
    import re
    from importlib.metadata import PackageNotFoundError, version

    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    deps = re.findall(r'^\s*"([^"]+)"', block.group(1), re.M) if block else []
    out = {}
    for dep in deps:
        name = re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0]
        if name.lower() in OWN_FIELDS:
            continue
        try:
            out[name] = version(name)
        except PackageNotFoundError as exc:
            raise SystemExit(f"release: {name} (a runtime dependency) is not installed; run make venv first.") from exc
    return out


def _stage(b: Path, stage: Path) -> None:
    """Copy the bundle and the ``common`` package into ``stage``; point the metadata at real requirements."""
    shutil.copytree(b, stage, ignore=lambda d, names: [n for n in names if n in SKIP_DIRS])
    shutil.copytree(ROOT / "common", stage / "common", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    meta_path = stage / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    reqs = {k: v for k, v in meta.get("required_packages_version", {}).items() if k != "monai-registration-zoo"}
    meta["required_packages_version"] = {**reqs, **runtime_requirements()}
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")


def package(bundle: str | Path, out: str | Path, base_url: str, allow_untrained: bool = False) -> dict:
    """Package one bundle folder; returns its ``model_info.json`` entry.

    Args:
        bundle: bundle folder (or name under bundles/).
        out: release folder.
        base_url: URL under which the release folder will be served (no trailing slash).
        allow_untrained: package a bundle whose metadata does not say ``weights_trained`` (tests only).
    """
    b = Path(bundle)
    if not (b / "configs" / "metadata.json").is_file():
        b = ROOT / "bundles" / str(bundle)
    meta = json.loads((b / "configs" / "metadata.json").read_text())
    name, version = b.name, meta["version"]
    weights = b / "models" / "model.pt"
    if not weights.is_file():
        raise SystemExit(f"release: {weights} is missing; train and export the bundle first.")
    if not meta.get("weights_trained", False) and not allow_untrained:
        raise SystemExit(
            f"release: {name} metadata does not say weights_trained; refusing to publish untrained weights."
        )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_v{version}"
    weights_name = f"{stem}_model.pt"
    shutil.copyfile(weights, out_dir / weights_name)
    digest = sha256(out_dir / weights_name)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / name
        _stage(b, stage)
        (stage / "large_files.yml").write_text(
            "large_files:\n"
            '  - path: "models/model.pt"\n'
            f'    url: "{base_url}/{weights_name}"\n'
            f'    hash_val: "{digest}"\n'
            '    hash_type: "sha256"\n'
        )
        with atomic_path(out_dir / f"{stem}.zip") as zpath:
            with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in sorted(stage.rglob("*")):
                    if f.is_file():
                        zf.write(f, f.relative_to(stage.parent).as_posix())
    entry = {
        "version": version,
        "source": f"{base_url}/{stem}.zip",
        "sha256": sha256(out_dir / f"{stem}.zip"),
        "weights_url": f"{base_url}/{weights_name}",
        "weights_sha256": digest,
        "weights_trained": bool(meta.get("weights_trained", False)),
    }
    index_path = out_dir / "model_info.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index[stem] = entry
    with atomic_path(index_path) as tmp:
        tmp.write_text(json.dumps(index, indent=2))
    return entry


def main(out: str = "dist", base_url: str = "http://127.0.0.1:8000", bundle: str | None = None) -> None:
    """Package ``bundle`` (default: every bundle with trained weights) into ``out``."""
    names = [bundle] if bundle else [
        p.name for p in sorted((ROOT / "bundles").iterdir())
        if (p / "configs" / "metadata.json").is_file()
        and json.loads((p / "configs" / "metadata.json").read_text()).get("weights_trained", False)
    ]  # fmt: skip
    if not names:
        raise SystemExit("release: no bundle has trained weights yet.")
    for name in names:
        entry = package(name, out, base_url)
        print(f"release: {name} -> {entry['source']} (sha256 {entry['sha256'][:12]}...)")


if __name__ == "__main__":
    fire.Fire(main)
