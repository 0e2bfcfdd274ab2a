# zrsd developer commands.  Every target creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo torture bench drill venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# The long torture and fuzzing runs (marker `long`; their short versions
# run in `make test`).  Only the suites present are listed.
torture: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider -m long $(wildcard tests/torture tests/fuzz tests/crashstates) $(PYTEST_ARGS)

# Side-by-side benchmark against zc.zrs; results in var/bench/.
bench: $(STAMP)
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

# The failover runbook end to end with real processes (README, Failover).
drill: $(STAMP)
	$(BIN)/python scripts/drill.py $(DRILL_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
