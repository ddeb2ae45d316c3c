"""Plain-text reports of the scripts: mean ± sd cells, Markdown tables and the written report file."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["mean_sd", "markdown_table", "write_report"]


def mean_sd(values: Iterable[Any], digits: int = 4) -> str:
    """``"mean ± sd"`` (population sd) of the finite values; ``"n/a"`` when there are none."""
    vals = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    if not vals:
        return "n/a"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are converted with ``str`` (``|`` inside a cell is escaped)."""
    rows = [list(r) for r in rows]
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"markdown_table: a row has {len(r)} cells for {len(header)} columns: {r}")

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def write_report(path: str | os.PathLike, parts: Sequence[str]) -> str:
    """Join ``parts`` with newlines, write them atomically to ``path`` (folders created), print; return the path."""
    from common.io.nifti import atomic_path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(parts) + "\n"
    with atomic_path(p) as tmp:
        tmp.write_text(text)
    print(text)
    return str(p)
