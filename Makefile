# The two commands of the README.  `make demo` sets up .venv (torch 2.13.0 unless a torch is already
# there) and runs the main job on the embedded digits data; `make test` runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.backdoorkit-installed

.PHONY: demo test test-known lint bench clean

DEMO_OUT ?= runs/demo

demo: $(STAMP)
	$(VENV)/bin/backdoorkit demo --out $(DEMO_OUT)
	@echo "HTML report: $(abspath $(DEMO_OUT))/report.html"

test: $(STAMP)
	$(PY) -m pytest -q --durations=25

# Known failures: targets not reached yet (xfails with their measured numbers), kept out of `make test`
# so the default suite stays under 15 minutes on 2 cores.
test-known: $(STAMP)
	$(PY) -m pytest -q -m known_failure -rxX

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
