# On a fresh machine: `make demo`, `make lab` (the course in JupyterLab) and `make test`; each sets up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.minieq-installed
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

.PHONY: setup demo lab test test-lib test-notebooks test-full-smoke clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Data -> tiny tokenizer -> latents -> tiny generator -> samples and a long image, in runs/demo/.
demo: setup
	$(BIN)/python -m minieq.course.demo --out runs/demo

# The course in JupyterLab, from the same .venv (start with notebooks/00_setup_and_data.ipynb).
# As root (most GPU containers) JupyterLab refuses to start without --allow-root.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: setup
	$(BIN)/jupyter lab notebooks $(LAB_FLAGS)

test: test-lib test-notebooks test-full-smoke

test-lib: setup
	$(BIN)/python -m pytest tests

# The solution notebooks in FAST mode; each loads what an earlier one trained (runs/course/).
test-notebooks: setup
	MINIEQ_FAST=1 MINIEQ_SMOKE=0 MINIEQ_OFFICIAL= $(BIN)/python -m pytest -p no:cacheprovider --nbval-lax --nbval-current-env solutions

# Full mode (the 128-px course_gpu models) on the CPU under MINIEQ_SMOKE=1: every training capped
# to a few steps at a small batch, every sample / FD count and strip to a few (minieq.course), so
# each path only full mode takes runs, in minutes. Nothing is stored: nbval leaves the notebooks
# as they are, and the SMOKE models go to runs/course/full-smoke and runs/demo-smoke/models/full-smoke.
# Notebook 08's section on the paper's release runs on small random files in the official formats,
# converted by python -m minieq.convert_official (tests/official_format.py).
test-full-smoke: setup
	$(BIN)/python tests/official_format.py runs/official-smoke
	MINIEQ_FAST=0 MINIEQ_SMOKE=1 MINIEQ_OFFICIAL=runs/official-smoke $(BIN)/python -m pytest -p no:cacheprovider --nbval-lax --nbval-current-env solutions
	MINIEQ_SMOKE=1 $(BIN)/python -m minieq.course.demo --full --out runs/demo-smoke

clean:
	rm -rf runs .pytest_cache
