"""Image similarity of a registered pair."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.metrics._validation import same_shape, to_numpy

__all__ = ["global_ncc"]


def global_ncc(a: Any, b: Any) -> float:
    """Normalised cross-correlation of two images over all voxels, in ``[-1, 1]`` (0 when one is constant).

    The ``ncc_before`` / ``ncc_after`` of a bundle's ``metrics.json`` and the benchmark's image NCC."""
    caller = "global_ncc"
    x = to_numpy(a, "a", caller).astype(np.float64)
    y = to_numpy(b, "b", caller).astype(np.float64)
    same_shape(x, y, "a", "b", caller)
    x -= x.mean()  # in place (x, y are fresh float64 copies): the same values with half the memory
    y -= y.mean()
    xy = (x * y).sum()
    return float(xy / (np.sqrt((x * x).sum() * (y * y).sum()) + 1e-12))
