# micromoment: the README's commands. `make help` lists them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	bash scripts/ensure_postgres.sh
	bash scripts/ensure_chromium.sh
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project with its pinned dependencies

demo: $(STAMP) ## set up, then run the whole chain on synthetic data with a local SQLite MLflow store
	$(BIN)/micromoment run

test: $(STAMP) ## set up, then run every test, slow ones included (what CI runs)
	$(BIN)/python -m pytest -m "slow or not slow"

test-fast: $(STAMP) ## run the fast tests only
	$(BIN)/python -m pytest

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## run the training benchmark (200k sessions, with and without history) and rewrite bench/RESULTS.md
	$(BIN)/python bench/bench_training.py --no-history

notebooks: $(STAMP) ## run the notebooks top to bottom into notebooks/*.ipynb (outputs kept out of git)
	$(BIN)/jupytext --to notebook notebooks/01_sessions_and_journeys.py notebooks/02_model_report.py notebooks/03_compare_configs.py
	$(BIN)/jupyter-execute --inplace notebooks/01_sessions_and_journeys.ipynb notebooks/02_model_report.ipynb notebooks/03_compare_configs.ipynb

serve: $(STAMP) ## serve @champion of the local store on http://127.0.0.1:8080 (docs/serving.md)
	$(BIN)/micromoment serve

ui: $(STAMP) ## open the MLflow UI on the local store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

clean: ## remove run outputs and the local MLflow store
	rm -rf outputs multirun mlflow.db mlartifacts data

.PHONY: help setup demo test test-fast lint format bench notebooks serve ui clean
