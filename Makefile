# The two commands of the README: `make bench` runs the main job, `make test` the test suite.
# `make docs` builds the documentation site into docs/_build/html.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the wheels these machines carry locally; pyproject.toml only declares ranges.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv test test-fast lint typecheck package docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# mypy reads the packages under their installed names: link them where mypy_path points
typecheck: venv
	mkdir -p build/typecheck
	ln -sfn ../../streams build/typecheck/tta_streams
	ln -sfn ../../benchmarks build/typecheck/tta_bench
	$(BIN)/mypy

# the wheel and sdist, checked as the package index would check them
package: venv
	rm -rf build/dist
	$(BIN)/python -m build --outdir build/dist . >/dev/null
	$(BIN)/twine check --strict build/dist/*

docs: venv
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

test: lint typecheck package docs
	$(BIN)/python -m pytest -q

test-fast: venv  # no end-to-end runs, processes, compilation or Ray
	$(BIN)/python -m pytest -q -m "not slow and not multiprocess and not compile and not ray"

bench: venv
	$(BIN)/tta-bench run --dataset fmnist-c --model bundled --policies all \
		--order iid,dirichlet:0.1 --setting single --severity 5 --n-examples 2000 --seeds 0 \
		--workers 2 --out runs/quick

clean:
	rm -rf $(VENV) runs build docs/_build
