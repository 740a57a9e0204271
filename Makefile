# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
WORKERS ?= auto
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0.5

.PHONY: install demo test test-fast bench clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job: every baseline estimator on the contextual bandit, 8 seeds, report + plot.
demo: $(STAMP)
	$(PY) -m experiments.estimator_comparison --workdir=results/demo

# Every test and notebook, in parallel.
test: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) --dist=loadfile --durations=15 tests notebooks --nbmake

bench: $(STAMP)
	$(PY) -m benchmarks.estimators
	$(PY) -m benchmarks.rollout

clean:
	rm -rf $(VENV) results .jax_cache .pytest_cache .hypothesis *.egg-info
