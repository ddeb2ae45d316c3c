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


def test_write_report_creates_the_folder_writes_the_lines_and_prints(tmp_path, capsys):
    from common.io.report import write_report

    path = write_report(tmp_path / "new" / "summary.md", ["# title", "", "| a |"])
    assert path == str(tmp_path / "new" / "summary.md")
    assert (tmp_path / "new" / "summary.md").read_text() == "# title\n\n| a |\n"
    assert "| a |" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["summary.md"]  # no temporary file left
