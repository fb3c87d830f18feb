# Two commands do all set-up on a fresh machine:
#   make main   -- installs into .venv, runs the embedded pareto sweep and its analysis (figures, tables)
#   make test   -- installs into .venv, runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup main collapse test clean-runs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

main: setup
	$(PY) experiments/sweep.py --grid pareto --executor local
	$(PY) analysis/frontier.py --grid pareto

collapse: setup
	$(PY) experiments/collapse.py

test: setup
	$(PY) -m pytest -q

clean-runs:
	rm -rf runs
