"""Model-zoo conformance as our own checks (what Project-MONAI/model-zoo's CI and pre-commit verify, written here):
required files, JSON in the zoo's pretty format with final newlines, network I/O at the shapes the metadata
declares (the zoo's default ``n=1``), weights hashes, and configs that stay inside the bundle folder except through
the documented ``data_root``. Export (``ckpt_export``) is pinned in ``test_export.py``."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from monai.bundle import verify_net_in_out

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if (p / "configs" / "inference.json").is_file())
REQUIRED = ["LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md", "docs/data_license.txt"]
TEXT_SUFFIXES = {".json", ".conf", ".md", ".txt", ".yml", ".yaml", ".sha256", ""}


@pytest.fixture(params=BUNDLES, ids=lambda p: p.name)
def bundle(request) -> Path:
    return request.param


def _files(bundle: Path) -> list[Path]:
    return [p for p in bundle.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def test_required_files_exist(bundle):
    missing = [f for f in REQUIRED if not (bundle / f).is_file()]
    assert not missing, f"{bundle.name}: missing {missing}"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    if meta.get("weights_trained"):
        assert (bundle / "models" / "model.pt").is_file()


def test_json_is_in_the_zoo_pretty_format(bundle):
    """pre-commit ``pretty-format-json --no-sort-keys --indent=4`` (ASCII escapes) and ``end-of-file-fixer``."""
    for path in sorted(bundle.rglob("*.json")):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{path}: not in the zoo's JSON format"


def test_text_files_end_with_one_newline_and_no_trailing_spaces(bundle):
    for path in _files(bundle):
        if path.suffix not in TEXT_SUFFIXES or path.name.startswith("."):
            continue
        text = path.read_text()
        assert text.endswith("\n") and not text.endswith("\n\n"), f"{path}: final newline"
        bad = [i + 1 for i, line in enumerate(text.splitlines()) if line != line.rstrip()]
        assert not bad, f"{path}: trailing whitespace on lines {bad[:5]}"


def test_network_in_out_at_the_declared_shapes_with_the_zoo_defaults(bundle):
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        bundle_root=str(bundle),
        device="cpu",
    )


def test_weights_match_their_recorded_sha256_and_no_empty_download_urls(bundle):
    weights = bundle / "models" / "model.pt"
    if weights.is_file():
        line = (bundle / "models" / "model.pt.sha256").read_text()
        assert line == f"{hashlib.sha256(weights.read_bytes()).hexdigest()}  model.pt\n"
    # the repository ships weights inside the bundle; a large_files.yml (written by scripts/release.py) must have
    # real URLs: MONAI's download_large_files fails on url: "" (unknown url type)
    for name in ("large_files.yml", "large_files.yaml", "large_files.json"):
        if (bundle / name).is_file():
            text = (bundle / name).read_text()
            assert not re.search(r'url:\s*""', text) and "hash_type" in text, f"{bundle / name}"


def _strings(obj, key=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v, key)
    elif isinstance(obj, str):
        yield key, obj


def test_configs_reach_outside_the_bundle_only_through_data_root(bundle):
    """A downloaded bundle has no ``../../data``: only ``data_root`` (documented in the card, overridable with
    ``--data_root``) may point outside the bundle folder."""
    for path in sorted((bundle / "configs").glob("*.json")):
        for key, value in _strings(json.loads(path.read_text())):
            if re.search(r"'\.\.'|\"\.\.\"|\.\./", value):
                assert key == "data_root", f"{path}: {key!r} reaches outside the bundle: {value}"


def test_cards_document_data_root(bundle):
    train = bundle / "configs" / "train.json"
    if train.is_file() and "data_root" in json.loads(train.read_text()):
        assert "data_root" in (bundle / "docs" / "README.md").read_text(), f"{bundle.name}: card lacks data_root"
