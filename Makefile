# ipsec-lab: the two set-up commands are `make lab-up` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TOPO   ?= intranet-pair
NAME   ?=
LAB    := $(PY) -m lab

.PHONY: host venv images test unit lab-tests lint lab-up lab-down lab-status bench clean

# Debian packages of host-packages.txt: installed as root, else the command to run is printed.
host:
	@tools/host-packages

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@echo "== python environment ($(VENV)): this checkout and its dependencies"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -e '.[dev]'
	touch $@

# Base image and every image a runnable topology uses; rebuilt only when their inputs change.
images: venv
	@echo "== images"
	$(LAB) images --if-possible

lab-up: host images
	@tools/lab-on-path
	$(LAB) up $(TOPO) $(if $(NAME),--name $(NAME))

lab-down: venv
	$(LAB) down $(TOPO) $(if $(NAME),--name $(NAME))

lab-status: venv
	$(LAB) status

unit: venv
	$(PY) -m pytest -q tests/unit

# -v: each test's name as it starts, its result and the run's progress in percent.
test: host lint images
	@echo "== tests (unit and lab)"
	$(PY) -m pytest -v -rs tests

bench: images
	$(PY) -m bench

# ruff, then mypy over what pyproject.toml's [tool.mypy] `files` names (ipsecd and lab).
lint: venv
	@echo "== lint (ruff, mypy)"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf .build results

# Every fuzz target at length (results/fuzz/<target>/crash-* on a crash); `make test` runs them briefly.
FUZZ_INPUTS ?= 1000000
.PHONY: fuzz
fuzz: venv
	nice -n 10 $(PY) -m fuzz --inputs $(FUZZ_INPUTS)
