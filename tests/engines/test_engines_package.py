"""``common.engines`` and ``common.io`` load their parts on first use: training does not import the inference writers."""

from __future__ import annotations

import subprocess
import sys

import pytest

import common.engines as engines


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in sys.modules if m.startswith('common.')))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    return set(run.stdout.split())


def test_training_names_do_not_load_the_output_writers():
    loaded = _loaded_after("import common.engines as e; e.PairPrepareBatch; e.RegistrationLoss; e.SVFToDDF")
    assert "common.engines.registration" in loaded
    assert not loaded & {"common.engines.inference", "common.engines.outputs", "common.io.qc"}, loaded
    loaded = _loaded_after("import common.engines.training")
    assert not loaded & {"common.engines.inference", "common.engines.outputs", "common.io.qc"}, loaded


def test_every_exported_name_resolves_and_unknown_names_raise():
    for name in engines.__all__:
        assert getattr(engines, name).__module__.startswith("common.engines."), name
    assert set(engines.__all__) <= set(dir(engines))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        engines.Nope  # noqa: B018


def test_common_io_loads_only_the_part_asked_for():
    loaded = _loaded_after("from common.io import read_nifti, atomic_path")
    assert "common.io.nifti" in loaded
    assert not loaded & {"common.io.qc", "common.io.itk_field", "common.io.l2r"}, loaded
    import common.io as io

    assert all(callable(getattr(io, name)) or isinstance(getattr(io, name), type) for name in io.__all__)
