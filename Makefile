# natgrad's tasks. `make demo` and `make test` are the README's two commands; both install
# what they need first (once per checkout, recorded in .installed).
PY ?= python
PYTEST_WORKERS ?= 2

.PHONY: install demo test test-all lint format bench figures notebooks verify clean

.installed: pyproject.toml Makefile
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,notebooks,plots,data,compare]"
	# Peers (oracles and benchmark baselines) declare torchvision, which has no CPU build
	# here and would drag in a CUDA torch: install them without their declared deps.
	$(PY) -m pip install -q --no-deps curvlinops-for-pytorch backpack-for-pytorch asdfghjkl
	touch .installed

install: .installed

demo: .installed
	$(PY) -m natgrad demo

test: .installed
	$(PY) -m pytest -n $(PYTEST_WORKERS) --nbmake natgrad tests notebooks

test-all: .installed
	$(PY) -m pytest -n $(PYTEST_WORKERS) --nbmake --run-montecarlo natgrad tests notebooks

lint: .installed
	$(PY) -m ruff check natgrad tests analysis bench paper_figures
	$(PY) -m ruff format --check natgrad tests analysis bench paper_figures

format: .installed
	$(PY) -m ruff format natgrad tests analysis bench paper_figures
	$(PY) -m ruff check --fix natgrad tests analysis bench paper_figures

bench: .installed
	$(PY) bench/unit_fisher.py

figures: demo  # fig 2 reads the demo's runs (a finished demo is reused, not retrained)
	$(PY) paper_figures/fig1_units.py
	$(PY) paper_figures/fig2_mean_activation.py

notebooks: .installed
	$(PY) -m jupytext --sync notebooks/*.py

verify: .installed
	$(PY) -m natgrad verify

clean:
	rm -rf .installed build dist *.egg-info .pytest_cache .ruff_cache
