# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint jars clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip<25" uv
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) jars

# Delta jars resolved once from Maven Central into .jars/ (later runs work offline).
jars: $(STAMP)
	$(PY) -m etl.spark --fetch-jars

demo: install
	$(PY) jobs/quickstart.py

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .jars data test-artifacts
