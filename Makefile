# Everything a newcomer needs: `make demo` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp
# An editable install that type checkers see from outside the clone: setuptools' default puts
# an import hook in site-packages, which mypy and pyright never run (they read plain paths in
# .pth files); "compat" writes this folder's path there instead (docs/typing.md).
EDITABLE := --config-settings editable_mode=compat -e

.PHONY: demo test lint typecheck bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP)-demo: pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet $(EDITABLE) '.[demo]'
	touch $@

$(STAMP)-test: pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet $(EDITABLE) '.[test]'
	touch $@

$(STAMP)-bench: pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet $(EDITABLE) '.[bench]'
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
	$(PY) benchmarks/engine.py

$(STAMP)-docs: pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet $(EDITABLE) '.[docs]'
	touch $@

docs: $(STAMP)-docs
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .pytest_cache .ruff_cache docs/_build
