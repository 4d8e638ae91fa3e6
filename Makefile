# Everything a newcomer needs: `make demo` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

.PHONY: demo test lint typecheck bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP)-demo: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

$(STAMP)-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(STAMP)-bench: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

demo: $(STAMP)-demo
	$(PY) examples/demo.py

typecheck: $(STAMP)-test
	$(VENV)/bin/mypy

lint: $(STAMP)-test
	$(VENV)/bin/ruff check .

test: $(STAMP)-test
	$(VENV)/bin/mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

bench: $(STAMP)-bench
	$(PY) benchmarks/run.py
	$(PY) benchmarks/streaming.py
	$(PY) benchmarks/shared.py
	$(PY) benchmarks/checkpoint.py --million
	$(PY) benchmarks/results.py
	$(PY) benchmarks/sweeps.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/identity.py

$(STAMP)-docs: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $@

docs: $(STAMP)-docs
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .pytest_cache .ruff_cache docs/_build
