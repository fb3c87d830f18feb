# Two commands do all set-up on a fresh machine:
#   make main   -- installs into .venv, runs the embedded fast sweep (smoke/regression, NOT discriminative: the
#                  judging grid is pareto, docs/benchmark.md) and its analysis (figures, tables)
#   make test   -- installs into .venv, runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Everything CI tests: the core set, the SD3 path, the MLflow UI and pytest, at the versions CI tested.
EXTRAS ?= sd3,tracking,dev
CONSTRAINTS := constraints/ci.txt

.PHONY: setup main collapse test clean-runs constraints

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

main: setup
	$(PY) experiments/sweep.py --grid fast --executor local
	$(PY) analysis/frontier.py --grid fast

collapse: setup
	$(PY) experiments/collapse.py

test: setup
	$(PY) -m pytest -q

clean-runs:
	rm -rf runs

# Re-resolve the newest versions pyproject.toml allows in a scratch venv and pin them in constraints/ci.txt;
# then `rm -rf .venv && make test` tests the new set (commit the file only if that passes).
constraints:
	rm -rf $(VENV)-refresh
	$(PYTHON) -m venv $(VENV)-refresh
	$(VENV)-refresh/bin/pip install -q --upgrade pip
	$(VENV)-refresh/bin/pip install -q ".[$(EXTRAS)]"
	{ echo "# The exact package set CI tested (pip freeze of the CI venv, without drift-bench itself)."; \
	  echo "# Used by 'make setup' (pip install -c constraints/ci.txt ...). Refresh after a dependency change: make constraints"; \
	  $(VENV)-refresh/bin/pip freeze --all --exclude-editable | grep -iv '^drift-bench\|^pip=='; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	rm -rf $(VENV)-refresh
	@echo "pinned $$(grep -c '==' $(CONSTRAINTS)) packages in $(CONSTRAINTS); now: rm -rf $(VENV) && make test"
