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

test: images
	@echo "== tests (unit and lab)"
	$(PY) -m pytest -q -rs tests

bench: images
	$(PY) -m bench

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf .build results

# Every fuzz target at length (results/fuzz/<target>/crash-* on a crash); `make test` runs them briefly.
FUZZ_INPUTS ?= 1000000
.PHONY: fuzz
fuzz: venv
	nice -n 10 $(PY) -m fuzz --inputs $(FUZZ_INPUTS)
