# Two entry points do all the set-up on a fresh machine:
#   make demo   -- create .venv, install simfer, run the end-to-end demo
#   make test   -- create .venv, install simfer with its test tools, lint, build the docs site
#                  (mkdocs --strict), run the tests
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.simfer-installed
LINTED := $(wildcard simfer simulators tests tutorials benchmarks docs/hooks)

.PHONY: demo test test-all lint docs venv clean

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

# The docs site, built with --strict (a broken link, a missing anchor or a docstring that
# mkdocstrings cannot render fails it) into a temporary folder; `.venv/bin/mkdocs serve`
# shows it while you write.
docs: $(STAMP)
	@site=$$(mktemp -d) && trap 'rm -rf "$$site"' EXIT && \
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir "$$site"

test: lint docs
	$(PY) -m pytest -m "not slow" -q

test-all: lint docs
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache
