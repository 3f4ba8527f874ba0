# ipsec-lab: the two set-up commands are `make lab-up` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TOPO   ?= intranet-pair

.PHONY: venv test unit lint lab-up lab-down bench clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

unit: venv
	$(PY) -m pytest -q tests/unit

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
