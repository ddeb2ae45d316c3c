"""Dice with the Learn2Reg skipping rule, and consecutive relabelling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from common.metrics import dice_per_label, mean_dice, present_labels, relabel_consecutive

# pred / ref on a 3 x 4 grid: label 1 overlaps on 2 of 4 + 4 voxels, label 2 identical (3 voxels),
# label 3 only in pred (skipped), label 5 only in ref (skipped)
PRED = np.array([[1, 1, 1, 1], [2, 2, 2, 0], [3, 0, 0, 0]])
REF = np.array([[1, 1, 0, 0], [2, 2, 2, 1], [1, 5, 0, 0]])


@pytest.mark.parametrize(
    "labels, expected, skipped",
    [
        (None, {1: 0.5, 2: 1.0}, [3, 5]),
        ([1], {1: 0.5}, []),
        ([2, 3], {2: 1.0}, [3]),
        ([7], {}, [7]),
    ],
)
def test_dice_known_overlap_and_skipping(labels, expected, skipped):
    scores, skip = dice_per_label(PRED, REF, labels, return_skipped=True)
    assert scores == pytest.approx(expected)
    assert skip == skipped
    assert dice_per_label(PRED, REF, labels) == pytest.approx(expected)


def test_dice_symmetric_and_mean():
    assert dice_per_label(PRED, REF) == dice_per_label(REF, PRED)
    assert mean_dice(PRED, REF) == pytest.approx(0.75)
    assert math.isnan(mean_dice(PRED, REF, [3, 5]))


def test_dice_presence_from_unwarped_moving():
    # label 4 is in fixed and in the unwarped moving image, but the warp removed it from pred:
    # Learn2Reg scores it 0 instead of skipping it
    ref = np.array([[4, 4, 1, 1]])
    pred = np.array([[1, 1, 1, 1]])
    moving = np.array([[4, 1, 0, 0, 0]])  # a different grid is fine for the presence test
    assert dice_per_label(pred, ref, moving=moving) == pytest.approx({1: 2 * 2 / 6, 4: 0.0})
    assert dice_per_label(pred, ref) == pytest.approx({1: 2 * 2 / 6})


def test_dice_accepts_torch_and_integer_floats_3d():
    ref = np.zeros((4, 4, 4), dtype=np.int64)
    ref[1:3, 1:3, 1:3] = 7
    pred = np.roll(ref, 1, axis=2)  # 8 voxels each, 4 shared
    expected = {7: 0.5}
    assert dice_per_label(torch.from_numpy(pred), torch.from_numpy(ref)) == pytest.approx(expected)
    assert dice_per_label(pred.astype(np.float32), ref.astype(np.float64)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "pred, ref, match",
    [
        (
            np.zeros((3, 4)),
            np.zeros((4, 3)),
            r"dice_per_label: shapes differ: `pred` \(3, 4\) vs `ref` \(4, 3\)",
        ),
        (np.array([0.0, np.nan]), np.zeros(2), "dice_per_label: `pred` contains NaN"),
        (np.zeros(2), np.array([0.5, 1.0]), "dice_per_label: `ref` holds non-integer values"),
    ],
)
def test_dice_bad_inputs(pred, ref, match):
    with pytest.raises(ValueError, match=match):
        dice_per_label(pred, ref)


def test_dice_rejects_lists():
    with pytest.raises(TypeError, match="dice_per_label: `pred` must be a numpy.ndarray or torch.Tensor"):
        dice_per_label([1, 2], np.zeros(2))


@settings(max_examples=25, deadline=None)
@given(
    st.integers(min_value=2, max_value=3).flatmap(
        lambda nd: st.tuples(
            *[arrays(np.int8, (4,) * nd, elements=st.integers(0, 3)) for _ in range(2)],
        )
    )
)
def test_dice_fuzz_range_and_symmetry(maps):
    a, b = maps
    ab, ba = dice_per_label(a, b), dice_per_label(b, a)
    assert ab == ba
    assert all(0.0 <= v <= 1.0 for v in ab.values())
    assert set(ab) == set(present_labels(a, b))


@pytest.mark.parametrize(
    "labels, expected_map, expected_used",
    [
        (None, [[0, 1, 3], [2, 1, 0]], (2, 17, 41)),
        ([41, 2], [[0, 2, 1], [0, 2, 0]], (41, 2)),
        ([2, 17, 41, 99], [[0, 1, 3], [2, 1, 0]], (2, 17, 41, 99)),
    ],
)
def test_relabel_consecutive_freesurfer_codes(labels, expected_map, expected_used):
    fs = np.array([[0, 2, 41], [17, 2, 0]])
    out, used = relabel_consecutive(fs, labels)
    np.testing.assert_array_equal(out, expected_map)
    assert used == expected_used
    out_t, used_t = relabel_consecutive(torch.from_numpy(fs), labels)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.int64
    np.testing.assert_array_equal(out_t.numpy(), expected_map)
    assert used_t == expected_used


@pytest.mark.parametrize(
    "labels, match",
    [([2, 2], "relabel_consecutive: `labels` contains repeated codes"), ([0, 2], "background code 0")],
)
def test_relabel_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        relabel_consecutive(np.array([0, 2]), labels)


def test_relabel_then_dice_unchanged():
    pred, ref = PRED * 10 + 1, REF * 10 + 1  # codes 11, 21, ... background 1 -> relabelled away
    used = tuple(c for c in present_labels(pred, ref) if c != 1)
    rp, _ = relabel_consecutive(pred, used)
    rr, _ = relabel_consecutive(ref, used)
    assert mean_dice(rp, rr) == pytest.approx(mean_dice(pred, ref, used))
