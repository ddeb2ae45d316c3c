from __future__ import annotations

import numpy as np
import pytest
import torch

from common.metrics import global_ncc


def test_global_ncc_values_and_errors():
    rng = np.random.default_rng(0)
    a = rng.random((8, 9, 10)).astype(np.float32)
    assert global_ncc(a, a) == pytest.approx(1.0)
    assert global_ncc(a, 3.0 * a + 2.0) == pytest.approx(1.0)  # invariant to gain and offset
    assert global_ncc(a, -a) == pytest.approx(-1.0)
    assert global_ncc(torch.as_tensor(a), a) == pytest.approx(1.0)
    b = rng.random((8, 9, 10))
    assert abs(global_ncc(a, b)) < 0.1  # independent noise
    assert global_ncc(a, np.ones_like(a)) == 0.0  # constant image: no correlation, no division by zero
    with pytest.raises(ValueError, match="global_ncc: shapes differ"):
        global_ncc(a, a[:-1])
