# The two commands of the README: `make bench` runs the main job, `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the wheels these machines carry locally; pyproject.toml only declares ranges.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

test-fast: venv  # the core in about a minute: no end-to-end runs, processes, compilation or Ray
	$(BIN)/python -m pytest -q -m "not slow and not multiprocess and not compile and not ray"

bench: venv
	$(BIN)/tta-bench run --dataset fmnist-c --model bundled --policies all \
		--order iid,dirichlet:0.1 --setting single --severity 5 --n-examples 2000 --seeds 0 \
		--workers 2 --out runs/quick

clean:
	rm -rf $(VENV) runs
