"""Fixtures shared by the robustness tests: the bundle's untrained weights and a good tiny pair."""

from __future__ import annotations

import pytest
import torch
from test_cli_bad_inputs import BUNDLE, ROOT, _blob, _save


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(ROOT / "bundles" / BUNDLE)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return str(path)


@pytest.fixture()
def good(tmp_path) -> dict[str, str]:
    return {"moving": _save(tmp_path / "moving.nii.gz", _blob(1.0)), "fixed": _save(tmp_path / "fixed.nii.gz", _blob())}
