# ipsec-lab: the two set-up commands are `make lab-up` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TOPO   ?= intranet-pair
NAME   ?=
LAB    := $(PY) -m lab

.PHONY: venv images test unit lab-tests lint lab-up lab-down lab-status bench clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@echo "== python environment ($(VENV))"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -q -e '.[dev]'
	touch $@

# Base image and every image a runnable topology uses; rebuilt only when their inputs change.
images: venv
	@echo "== images"
	$(LAB) images --if-possible

lab-up: images
	$(LAB) up $(TOPO) $(if $(NAME),--name $(NAME))

lab-down: venv
	$(LAB) down $(TOPO) $(if $(NAME),--name $(NAME))

lab-status: venv
	$(LAB) status

unit: venv
	$(PY) -m pytest -q tests/unit

test: lint images
	@echo "== tests (unit and lab)"
	$(PY) -m pytest -q -rs tests

bench: images
	$(PY) -m bench

# ruff, then mypy over what pyproject.toml's [tool.mypy] `files` names (ipsecd and lab).
lint: venv
	@echo "== lint (ruff, mypy)"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf .build results
