"""Which bundles count as trained: metadata flag *and* shipped weights, filtered by network dimension."""

from __future__ import annotations

import json

from common.engines.bundle import bundle_dims, is_trained, trained_bundles


def _bundle(root, name, trained, weights, shape):
    b = root / name
    (b / "configs").mkdir(parents=True)
    meta = {"weights_trained": trained, "network_data_format": {"inputs": {"image": {"spatial_shape": shape}}}}
    (b / "configs" / "metadata.json").write_text(json.dumps(meta))
    if weights:
        (b / "models").mkdir()
        (b / "models" / "model.pt").write_bytes(b"x")
    return b


def test_trained_needs_flag_and_weights_and_filters_by_dims(tmp_path):
    a = _bundle(tmp_path, "a3d", True, True, ["16*n"] * 3)
    _bundle(tmp_path, "b3d_flag_only", True, False, ["16*n"] * 3)
    _bundle(tmp_path, "c3d_weights_only", False, True, ["16*n"] * 3)
    d = _bundle(tmp_path, "d2d", True, True, [112, 112])
    assert (
        is_trained(a) and not is_trained(tmp_path / "b3d_flag_only") and not is_trained(tmp_path / "c3d_weights_only")
    )
    assert bundle_dims(a) == 3 and bundle_dims(d) == 2
    assert trained_bundles(tmp_path) == [a, d]
    assert trained_bundles(tmp_path, dims=3) == [a] and trained_bundles(tmp_path, dims=2) == [d]
