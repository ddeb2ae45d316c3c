"""Shared test configuration: deterministic seeds and a small thread count (CI has 2 cores)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


SLOW_TEST_TIMEOUT_S = 3600


def pytest_collection_modifyitems(config, items) -> None:
    """Slow-marked tests (whole registrations at 1 mm, peers) get an hour instead of the default per-test limit."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))
