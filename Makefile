# galda — `make help` lists the targets. The first target that needs Python creates .venv.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.galda-installed
ARGS ?=
SEEDS ?= 1,2,3

.DEFAULT_GOAL := help
.PHONY: help venv data gallery run lint format test test-all test-slow table1 table1-quick report figures bench clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_-]+:.*?## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install galda with its test extras

data: $(STAMP) ## Simulate the small embedded data set into data/ (done automatically on first use)
	$(PY) -m galda.simulate --preset small --out data/simulated/small-seed1 --seed 1 --workers 2

gallery: $(STAMP) ## Draw the source/target gallery of the small data set (docs/img/gallery.png)
	$(PY) -m galda.simulate.gallery data/simulated/small-seed1 --out docs/img/gallery.png

run: $(STAMP) ## The main job: baseline, MMD and DANN DeepMerge on the small simulated set, side by side
	$(PY) -m galda.simulate --preset small --seed 1 --workers 2 --out data/simulated/small-seed1
	$(PY) -m galda.run experiment=quickstart $(ARGS)
	$(PY) -m galda.report outputs/multirun/quickstart --out outputs/multirun/quickstart/report

lint: $(STAMP) ## ruff (lint + format check) and mypy on src/galda, as CI runs them
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

format: $(STAMP) ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

test: $(STAMP) lint ## Lint and types, then the test suite without the tests marked slow (CPU, offline)
	WANDB_MODE=offline $(PY) -m pytest -q -m "not slow" $(ARGS)

test-all: $(STAMP) lint ## Lint and types, then every test, slow ones included
	WANDB_MODE=offline $(PY) -m pytest -q $(ARGS)

table1-quick: $(STAMP) ## Table 1 on 2 CPU cores: DeepMerge x 3 methods x 3 seeds, small set (~25 min: an estimate, 4.5x make run's measured 5.5 min)
	$(PY) -m galda.run experiment=table1_quick hydra/launcher=gpus $(ARGS)
	$(PY) -m galda.report outputs/multirun/table1_quick --out experiments/table1_quick --paper

table1: $(STAMP) ## The paper's grid: 2 models x 3 methods x 10 seeds on the paper-sized set (GPU)
	$(PY) -m galda.run experiment=table1 hydra/launcher=gpus $(ARGS)
	$(PY) -m galda.report outputs/multirun/table1 --out experiments/table1 --paper

report: $(STAMP) ## Tables and figures from every results.json under outputs/
	$(PY) -m galda.report outputs --out outputs/report --paper

figures: $(STAMP) ## Figure 1 (and tables) for the quick and full Table 1 runs that exist
	@for d in table1_quick table1; do \
	  if [ -d outputs/multirun/$$d ]; then $(PY) -m galda.report outputs/multirun/$$d --out experiments/$$d --paper; fi; \
	done

bench: $(STAMP) ## Throughput benchmarks: package vs plain loop, skada peer row, loaders, simulator
	$(PY) -m pip install --quiet -e '.[bench]' || echo "skada not installable: the peer row is skipped"
	$(PY) benchmarks/run.py $(ARGS)

clean: ## Remove outputs (keeps data/ and .venv)
	rm -rf outputs multirun .pytest_cache
