# `make demo` and `make test` each set up .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-all docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# a plain `torch` requirement would pull a multi-GB CUDA build: take the CPU wheel first
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[all]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=25

test-all: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m ""

# the documentation site (Sphinx, pydata theme, a gallery of examples/); warnings are errors
docs: $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	rm -rf docs/_build docs/auto_examples docs/generated
	$(PY) -m sphinx -b html -W --keep-going -q docs docs/_build/html
	@echo "site: docs/_build/html/index.html"

clean:
	rm -rf $(VENV) out .pytest_cache docs/_build docs/auto_examples docs/generated
