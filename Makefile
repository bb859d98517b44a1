# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint jars tools clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip<25" uv
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) jars

# Delta jars resolved once from Maven Central into .ivy2/ (later runs work offline).
jars: $(STAMP)
	$(PY) -m etl.spark --fetch-jars

# What the object-store tests need: the S3A jars (~280 MB) and SeaweedFS, built once from the
# Go module proxy (~10 min on 2 cores) into ~/.cache/isrec/tools.
tools: $(STAMP)
	$(PY) -m etl.spark --fetch-jars --object-store
	infra/local/s3.sh install

demo: install
	$(PY) jobs/quickstart.py

test: install tools
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .ivy2 data test-artifacts
