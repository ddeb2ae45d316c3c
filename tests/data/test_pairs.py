"""Pair datalists, subject-level splits, paired patch cropping and the 2-channel network input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.data import pairs as P
from common.transforms.pairs import StackPaird, paired_random_crop


def subjects(n: int, labels: bool = True) -> list[dict]:
    out = []
    for i in range(n):
        item = {"id": f"s{i:02d}", "image": f"/d/s{i:02d}.nii.gz"}
        if labels:
            item["label"] = f"/d/s{i:02d}_seg.nii.gz"
        out.append(item)
    return out


def test_make_pair_keys():
    pair = P.make_pair(subjects(2)[0], subjects(2)[1])
    assert pair == {
        "id": "s00_to_s01", "moving_id": "s00", "fixed_id": "s01",
        "moving_image": "/d/s00.nii.gz", "fixed_image": "/d/s01.nii.gz",
        "moving_label": "/d/s00_seg.nii.gz", "fixed_label": "/d/s01_seg.nii.gz",
    }  # fmt: skip
    assert "moving_label" not in P.make_pair(subjects(1)[0], subjects(1, labels=False)[0])
    only_labels = P.make_pair({"id": "a", "label": "a.nii.gz"}, {"id": "b", "label": "b.nii.gz"})
    assert set(only_labels) == {"id", "moving_id", "fixed_id", "moving_label", "fixed_label"}
    with pytest.raises(ValueError, match="'image'"):
        P.make_pair({"id": "x"}, subjects(1)[0])


def test_all_pairs_counts():
    assert len(P.all_pairs(subjects(4))) == 12 and len(P.all_pairs(subjects(4), ordered=False)) == 6


def test_random_pairs_deterministic_and_inter_subject():
    items = subjects(5)
    a, b, c = P.random_pairs(items, 20, seed=1), P.random_pairs(items, 20, seed=1), P.random_pairs(items, 20, seed=2)
    assert a == b and a != c and len(a) == 20
    assert all(p["moving_id"] != p["fixed_id"] for p in a)
    same = P.random_pairs(subjects(1), 3, allow_same_subject=True)
    assert all(p["moving_id"] == p["fixed_id"] == "s00" for p in same)
    with pytest.raises(ValueError, match="at least 2 distinct"):
        P.random_pairs(subjects(1), 3)


def test_atlas_pairs_directions():
    atlas = {"id": "template", "image": "/t.nii.gz", "label": "/t_seg.nii.gz"}
    a2s = P.atlas_pairs(atlas, subjects(3))
    assert [p["moving_id"] for p in a2s] == ["template"] * 3 and a2s[0]["moving_label"] == "/t_seg.nii.gz"
    s2a = P.atlas_pairs(atlas, subjects(3), direction="subject_to_atlas")
    assert [p["fixed_id"] for p in s2a] == ["template"] * 3
    with pytest.raises(ValueError, match="direction"):
        P.atlas_pairs(atlas, subjects(3), direction="both")


def test_split_subjects_by_subject_with_pins():
    # two scans of the same subject (key "subject") must stay together
    items = [{"id": f"s{i}_scan{j}", "subject": f"s{i}", "image": f"/d/{i}_{j}"} for i in range(10) for j in range(2)]
    splits = P.split_subjects(items, n_validation=2, n_test=0.25, seed=0, fixed={"test": ["s9"]})
    subj = {k: {e["subject"] for e in v} for k, v in splits.items()}
    assert len(subj["validation"]) == 2 and len(subj["test"]) == 3 and "s9" in subj["test"]
    assert sum(len(v) for v in splits.values()) == 20
    P.check_disjoint_subjects(splits)
    assert P.split_subjects(items, 2, 2, seed=0) == P.split_subjects(items, 2, 2, seed=0)
    with pytest.raises(ValueError, match="asked for"):
        P.split_subjects(items, 8, 5)
    with pytest.raises(ValueError, match="unknown split"):
        P.split_subjects(items, fixed={"holdout": ["s1"]})


def test_check_disjoint_subjects_on_pairs():
    train = P.all_pairs(subjects(3))
    with pytest.raises(ValueError, match="subject 's02' is in both 'training' and 'test'"):
        P.check_disjoint_subjects({"training": train, "test": P.all_pairs(subjects(4)[2:])})


def test_paired_random_crop_same_location_for_all_keys():
    shape = (20, 24, 28)
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(np.float32)
    code = torch.from_numpy(coords[0] * 10000 + coords[1] * 100 + coords[2])[None]  # voxel -> unique value
    data = {"moving_image": code.clone(), "fixed_image": code.clone() + 0.5, "moving_label": code.clone()}
    crop = paired_random_crop((8, 8, 8))
    starts = set()
    for seed in range(6):
        crop.set_random_state(seed)
        out = crop(dict(data))
        assert out["moving_image"].shape == (1, 8, 8, 8) and "fixed_label" not in out
        assert torch.equal(out["fixed_image"] - 0.5, out["moving_image"])
        assert torch.equal(out["moving_label"], out["moving_image"])
        starts.add(float(out["moving_image"][0, 0, 0, 0]))
    assert len(starts) > 1  # the location really is random


def test_stack_pair():
    m = MetaTensor(torch.zeros(1, 4, 5, 6), affine=torch.eye(4) * 2)
    f = MetaTensor(torch.ones(1, 4, 5, 6), affine=torch.eye(4) * 2)
    out = StackPaird()({"moving_image": m, "fixed_image": f})["image"]
    assert out.shape == (2, 4, 5, 6) and out[0].max() == 0 and out[1].min() == 1
    assert isinstance(out, MetaTensor)
    with pytest.raises(ValueError, match="same spatial shape"):
        StackPaird()({"moving_image": torch.zeros(1, 4, 5, 6), "fixed_image": torch.zeros(1, 4, 5, 7)})
