# fastgen: `make demo` and `make test` each set up everything on a fresh machine (a venv in .venv) first.
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,s3,kubeflow

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/fastgen demo --out demo_out

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest

bench: install
	$(VENV)/bin/python -m benchmarks.speed

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache
