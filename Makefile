# The two set-up commands of the README: `make demo` and `make test`.
# Each creates (or reuses) .venv and installs what it needs. torch is installed first and pinned,
# so this machine takes its local CPU build instead of a multi-GB CUDA download.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test bench lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/richrep run examples/quickstart.yaml

test: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow" -q

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/train_seeds.py
	$(BIN)/python benchmarks/probe.py
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/similarity.py

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
