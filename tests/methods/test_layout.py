"""Each bundle reaches its method's code in one hop: ``common.methods.<method>``, named after the bundle."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if (p / "configs" / "inference.json").is_file())


def _method(bundle: Path) -> str:
    return bundle.name.split("_", 2)[2]  # <organ>_<modality>_<method>


def _targets(bundle: Path) -> set[str]:
    text = "".join((bundle / "configs" / f).read_text() for f in ("train.json", "inference.json", "evaluate.json"))
    return set(re.findall(r"common\.methods\.[A-Za-z_.]+", text))


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_the_network_comes_from_the_bundles_own_method_package(bundle):
    method = _method(bundle)
    package = importlib.import_module(f"common.methods.{method}")
    assert Path(package.__file__).parent == ROOT / "common" / "methods" / method
    for name in ("train.json", "inference.json"):
        target = json.loads((bundle / "configs" / name).read_text())["network_def"]["_target_"]
        assert target.startswith(f"common.methods.{method}."), (name, target)
        cls = getattr(package, target.rsplit(".", 1)[1])
        assert inspect.isclass(cls)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_no_bundle_uses_another_methods_code(bundle):
    targets = _targets(bundle)
    assert targets, bundle.name
    own = f"common.methods.{_method(bundle)}"
    for target in targets - {own}:  # the package itself appears in the configs' "$import" lines
        module, _, name = target.rpartition(".")
        assert module == own, target
        assert hasattr(importlib.import_module(module), name), target


def test_every_method_package_has_a_bundle_and_no_method_imports_another():
    methods = sorted(p.name for p in (ROOT / "common" / "methods").iterdir() if (p / "__init__.py").is_file())
    assert methods == sorted(_method(b) for b in BUNDLES)
    for method in methods:
        for source in (ROOT / "common" / "methods" / method).glob("*.py"):
            others = set(re.findall(r"common\.methods\.(\w+)", source.read_text())) - {method}
            assert not others, (source, others)
