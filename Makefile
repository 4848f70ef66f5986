# The two set-up commands of the README: `make demo` and `make test`.
# Each creates (or reuses) .venv and installs what it needs: the demo only richrep and its
# dependencies; the tests also pytest, hypothesis, ruff, Ray, MLflow and MkDocs. torch is installed
# first and pinned, so a machine with a local CPU build takes it instead of a multi-GB CUDA download
# (elsewhere: TORCH_INDEX=https://download.pytorch.org/whl/cpu make demo).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
INDEX := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: demo test test-slow docs bench lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(INDEX) "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.dev: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/richrep run examples/quickstart.yaml
	@echo "next: $(BIN)/richrep results runs/$$($(BIN)/python -c 'import richrep; print(richrep.load_experiment("examples/quickstart.yaml").run_id())')   (or: source $(BIN)/activate)"

# The fast tier in one pytest worker per core (pytest-xdist), each on one torch thread: 119 s
# on the 2-core machine, against 172-188 s in one process.
test: $(BIN)/.dev
	$(BIN)/python -m pytest -m "not slow" -q -n auto

test-slow: $(BIN)/.dev
	$(BIN)/python -m pytest -m slow -q

# The documentation site (docs/, mkdocs.yml) into site/, warnings as errors; the fast test tier
# builds it too (tests/test_docs.py).
docs: $(BIN)/.dev
	$(BIN)/python -m mkdocs build --strict

bench: $(BIN)/.dev
	$(BIN)/python benchmarks/train_seeds.py
	$(BIN)/python benchmarks/probe.py
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/similarity.py
	$(BIN)/python benchmarks/ood_heads.py

lint: $(BIN)/.dev
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs site .pytest_cache
