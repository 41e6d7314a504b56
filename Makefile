# The two commands of README.md: `make example` and `make test`.
# Both create the virtualenv .venv first if it is missing (or setup.py changed).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test example clean

venv: $(STAMP)

# torch==2.13.0 (CPU) is pinned in setup.py's `test` extra; `mpi` (Open MPI
# and mpi4py wheels) lets the tests run data-parallel steps under mpirun.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[test,mpi]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest tests -ra -q

example: venv
	$(VENV)/bin/lantern run examples/char_rnn.py --steps 2000

# Build outputs and the test caches; the compile cache lives in
# LANTERN_CACHE_DIR (default ~/.cache/lantern_stage) and is left alone.
clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -name __pycache__ -prune -not -path './$(VENV)/*' -exec rm -rf {} +
