# Two entry points do all the set-up on a fresh machine:
#   make demo   -- create .venv, install simfer, run the end-to-end demo
#   make test   -- create .venv, install simfer with its test tools, lint, run the tests
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.simfer-installed
LINTED := $(wildcard simfer simulators tests tutorials benchmarks)

.PHONY: demo test test-all lint venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first, and only if it is missing: the CPU wheel on local disk, never a
# replacement for a (CUDA) torch the user already has in this environment.
$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m simfer.cli demo --out demo_output

lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

test: lint
	$(PY) -m pytest -m "not slow" -q

test-all: lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache
