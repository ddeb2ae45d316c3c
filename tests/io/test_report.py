"""Report helpers of the scripts: mean ± sd cells and Markdown tables."""

from __future__ import annotations

import math

import pytest

from common.io.report import markdown_table, mean_sd


def test_mean_sd_ignores_missing_and_non_finite_values():
    assert mean_sd([1.0, 3.0, None, math.nan]) == "2.0000 ± 1.0000"
    assert mean_sd([2.5], digits=1) == "2.5 ± 0.0"
    assert mean_sd([None, math.inf]) == "n/a"


def test_markdown_table_layout_escaping_and_width_check():
    text = markdown_table(["a", "b"], [[1, "x|y"], (2.5, "")])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |", "| 2.5 |  |"]
    with pytest.raises(ValueError, match="2 columns"):
        markdown_table(["a", "b"], [[1]])
