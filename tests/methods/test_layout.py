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


def test_no_script_or_test_edits_sys_path_and_nothing_imports_a_private_name_across_packages():
    """Scripts and tests import through packages (``scripts.x``, ``tests.x``, ``common.x``), not by putting folders on
    ``sys.path``; in the product (``common``, ``scripts``) a ``_private`` name of ``common`` is used only inside its
    own package (tests may reach the private helpers of the module they test)."""
    import ast

    edits, private = [], []
    files = [*(ROOT / "scripts").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "common").rglob("*.py")]
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("insert", "append"):
                if isinstance(node.value, ast.Attribute) and node.value.attr == "path":
                    if isinstance(node.value.value, ast.Name) and node.value.value.id == "sys":
                        edits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            product = ROOT / "tests" not in path.parents
            if product and isinstance(node, ast.ImportFrom) and (node.module or "").startswith("common."):
                home = ROOT / Path(*node.module.split(".")[:-1])
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__") and path.parent != home:
                        private.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}")
    assert edits == []
    assert private == []


def test_common_files_stay_under_400_lines_and_functions_under_80():
    import ast

    long_files, long_functions = [], []
    for path in (ROOT / "common").rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 400:
            long_files.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 >= 80:
                long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert long_files == []
    assert long_functions == []
