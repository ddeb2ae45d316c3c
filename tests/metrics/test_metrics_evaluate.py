"""The one-call Learn2Reg-style evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.metrics import evaluate_registration


def labels_3d() -> np.ndarray:
    lab = np.zeros((10, 10, 10), dtype=np.int64)
    lab[2:6, 2:6, 2:6] = 2
    lab[6:9, 2:8, 3:7] = 41
    return lab


def test_identity_registration_scores_perfectly():
    lab = labels_3d()
    out = evaluate_registration(np.zeros((3, 10, 10, 10)), lab, lab, (1.0, 1.0, 2.0))
    assert out["dice_mean"] == 1.0 and out["dice_per_label"] == {2: 1.0, 41: 1.0}
    assert out["hd95_mean"] == 0.0 and out["dice_skipped"] == []
    assert out["sdlogj"] == 0.0 and out["ndv_percent"] == 0.0 and out["folding_percent"] == 0.0


def test_shifted_labels_and_folding_field():
    fixed = labels_3d()
    warped = np.roll(fixed, 1, axis=0)
    warped[0, 0, 0] = 17  # only in the warped map: skipped
    u = np.zeros((3, 10, 10, 10))
    u[0, 4] = 3.0  # a folding spike plane (see test_metrics_jacobian)
    out = evaluate_registration(torch.from_numpy(u)[None], warped[None, None], fixed, (2.0, 1.0, 1.0))
    assert out["dice_skipped"] == [17]
    assert out["dice_per_label"][2] == pytest.approx(2 * 48 / 128)  # 4x4x4 cube shifted by one
    assert out["hd95_per_label"][2] == pytest.approx(2.0)
    assert out["folding_percent"] == pytest.approx(10.0)
    assert out["ndv_percent"] == pytest.approx(20.0)
    assert out["sdlogj"] > 0


def test_moving_labels_decide_skipping():
    fixed = labels_3d()
    warped = np.where(fixed == 41, 0, fixed)  # the warp lost label 41
    out = evaluate_registration(np.zeros((3, 10, 10, 10)), warped, fixed, moving_labels=fixed)
    assert out["dice_per_label"] == {2: 1.0, 41: 0.0} and out["dice_mean"] == 0.5
    assert np.isnan(out["hd95_per_label"][41]) and out["hd95_mean"] == 0.0


@pytest.mark.parametrize(
    "ddf, warped, match",
    [
        (
            np.zeros((3, 10, 10, 9)),
            labels_3d(),
            r"evaluate_registration: `warped_labels` has shape \(10, 10, 10\)",
        ),
        (np.zeros((3, 10, 10, 10)), labels_3d()[:, :, :9], r"evaluate_registration: shapes differ"),
        (np.zeros((2, 10, 10, 10)), labels_3d(), r"evaluate_registration: `ddf` has 2 channels"),
    ],
)
def test_evaluate_bad_inputs(ddf, warped, match):
    with pytest.raises(ValueError, match=match):
        evaluate_registration(ddf, warped, labels_3d())
