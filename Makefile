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

# The demo suite: the estimator comparison, PPO on CartPole and GRPO on a token task; one report
# with plots, results/demo/report.md (about a minute on 2 CPU cores).
demo: $(STAMP)
	$(PY) -m experiments.reproduce --suite=demo --workdir=results/demo

# Every test and notebook, in parallel.
test: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) --dist=loadscope --durations=15 tests notebooks --nbmake

bench: $(STAMP)
	$(PY) -m benchmarks.estimators
	$(PY) -m benchmarks.rollout

clean:
	rm -rf $(VENV) results .jax_cache .pytest_cache .hypothesis *.egg-info
