"""RandCardiacPhantomd / CardiacPhantomd: on-the-fly phantom pairs for MONAI pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset

from common.data.cardiac import PAIR_KEYS, CardiacPhantomParams, load_cardiac_stats
from common.transforms.cardiac import CardiacPhantomd, RandCardiacPhantomd


@pytest.fixture(scope="module")
def stats() -> dict:
    return load_cardiac_stats()


def test_output_keys_shapes(stats: dict) -> None:
    out = RandCardiacPhantomd(stats=stats)({"seed": 4, "extra": "kept"})
    assert set(PAIR_KEYS) <= set(out) and out["extra"] == "kept" and "phantom_params" in out
    assert out["moving_image"].shape == out["fixed_label"].shape == (1, 112, 112)
    assert out["moving_image"].dtype == np.float32 and out["moving_label"].dtype == np.uint8
    assert out["id"].endswith("_ED-ES")
    # ED -> ES: the moving LV cavity is the larger one
    assert (out["moving_label"] == 3).sum() > (out["fixed_label"] == 3).sum()


def test_seed_key_is_deterministic_and_replayable(stats: dict) -> None:
    t = RandCardiacPhantomd(stats=stats)
    a, b = t({"seed": 11}), RandCardiacPhantomd(stats=stats)({"seed": 11})
    np.testing.assert_array_equal(a["moving_image"], b["moving_image"])
    replay = CardiacPhantomd(stats=stats)({"phantom_params": a["phantom_params"]})
    np.testing.assert_array_equal(a["fixed_image"], replay["fixed_image"])
    np.testing.assert_array_equal(a["fixed_label"], replay["fixed_label"])
    assert not np.array_equal(a["moving_image"], t({"seed": 12})["moving_image"])


def test_random_state(stats: dict) -> None:
    t1 = RandCardiacPhantomd(stats=stats).set_random_state(seed=5)
    t2 = RandCardiacPhantomd(stats=stats).set_random_state(seed=5)
    first = t1({})
    np.testing.assert_array_equal(first["moving_image"], t2({})["moving_image"])
    assert not np.array_equal(first["moving_image"], t1({})["moving_image"])


def test_directions(stats: dict) -> None:
    fwd = RandCardiacPhantomd(stats=stats, direction="ED->ES")({"seed": 3})
    bwd = RandCardiacPhantomd(stats=stats, direction="ES->ED")({"seed": 3})
    np.testing.assert_array_equal(fwd["moving_image"], bwd["fixed_image"])
    np.testing.assert_array_equal(fwd["fixed_label"], bwd["moving_label"])
    rnd = RandCardiacPhantomd(stats=stats, direction="random")
    assert {rnd({"seed": s})["id"][-5:] for s in range(12)} == {"ED-ES", "ES-ED"}


def test_with_ddf(stats: dict) -> None:
    out = RandCardiacPhantomd(stats=stats, with_ddf=True)({"seed": 1})
    assert out["ddf"].shape == (2, 112, 112) and np.abs(out["ddf"]).max() > 1.0
    with pytest.raises(ValueError, match="with_ddf needs direction 'ED->ES'"):
        RandCardiacPhantomd(stats=stats, direction="random", with_ddf=True)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda s: RandCardiacPhantomd(stats=s, direction="ED-ES"), ValueError, "direction must be one of"),
        (lambda s: CardiacPhantomd(stats=s)({"x": 1}), KeyError, "has no 'phantom_params' entry"),
        (
            lambda s: CardiacPhantomd(stats=s)({"phantom_params": 3}),
            TypeError,
            "must be CardiacPhantomParams, a dict or a JSON",
        ),
        (
            lambda s: CardiacPhantomd(stats=s)({"phantom_params": "{oops"}),
            ValueError,
            "is a string but not JSON",
        ),
        (
            lambda s: CardiacPhantomd(stats=s)({"phantom_params": CardiacPhantomParams(cavity_shrink=2.0)}),
            ValueError,
            "cavity_shrink",
        ),
    ],
)
def test_bad_inputs(stats: dict, call, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call(stats)


def test_in_monai_dataloader(stats: dict) -> None:
    ds = Dataset([{"seed": i} for i in range(4)], RandCardiacPhantomd(size=(48, 48), spacing_mm=3.0, stats=stats))
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0)))
    assert isinstance(batch["moving_image"], torch.Tensor) and batch["moving_image"].shape == (4, 1, 48, 48)
    assert len(batch["id"]) == 4 and len(batch["phantom_params"]) == 4
