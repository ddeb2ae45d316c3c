# Two commands for a fresh machine: `make demo` and `make test`. Both bootstrap .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel: keeps CI and laptops off the multi-GB CUDA packages.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

# MONAI Label 0.8.5 needs numpy<2 and torchvision (= the default CUDA torch build, ~8 GB): its own environment.
LABEL_VENV ?= .venv-label
LABEL_STAMP := $(LABEL_VENV)/.installed

.PHONY: venv demo test test-all test-label label-env lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]" "$(TORCH_PIN)"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out outputs/demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not label" -q
	@if [ -x $(LABEL_VENV)/bin/monailabel ]; then $(MAKE) --no-print-directory test-label; \
	else echo "make test: $(LABEL_VENV) absent, MONAI Label server test skipped (make label-env && make test-label)"; fi

test-all: $(STAMP)
	$(PY) -m pytest -q -m "not label"

$(LABEL_STAMP): pyproject.toml
	test -x $(LABEL_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LABEL_VENV)/bin/python -m pip install --quiet monailabel==0.8.5 "pydicom<3" dicomweb-client==0.59.1 "pynetdicom<3"
	$(LABEL_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(LABEL_STAMP)

label-env: $(LABEL_STAMP)

test-label: $(STAMP) $(LABEL_STAMP)
	LABEL_VENV=$(LABEL_VENV) $(PY) -m pytest -m label -q tests/label

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) $(LABEL_VENV) outputs .pytest_cache .ruff_cache
