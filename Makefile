# Two commands for a newcomer: `make lab` (open the course) and `make test` (check everything).
# Both create .venv on first use and install the exact pins from requirements.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Test runs never open a plotting window. They never need the network either: conftest.py switches it off for
# every process of the run (tests/offline/sitecustomize.py), so nothing can download behind our back.
export MPLBACKEND := Agg
# JupyterLab saves widget state with the notebook (a reopened notebook shows the last picture, not an error).
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json

.PHONY: lab test test-fast mutation setup clean

setup: $(STAMP) $(LAB_OVERRIDES)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

$(LAB_OVERRIDES): jupyter/overrides.json $(STAMP)
	mkdir -p $(dir $@)
	cp jupyter/overrides.json $@

# Inside containers people often are root, which Jupyter refuses without --allow-root.
lab: $(STAMP) $(LAB_OVERRIDES)
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# Unit tests, every notebook re-executed by nbval, and the real-browser widget tests.
test: $(STAMP) $(LAB_OVERRIDES)
	$(PY) -m pytest -q tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

# Everything except the browser and notebooks: the quick loop while editing course_lib.
test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not browser" -p no:cacheprovider

# Mutation testing of the math core (schedules, samplers, guidance, the objectives, the EMA) against the fast unit
# tests. Not part of `make test`: about 10 minutes on 2 cores. mutation.md: the score and every surviving mutant.
MUTATE := 'course_lib.schedules*' 'course_lib.samplers*' 'course_lib.guidance*' 'course_lib.losses*' \
          'course_lib.training.x_update_ema*' 'course_lib.training.x_ema_decay_at*'
MUTATED := schedules|samplers|guidance|losses|x_update_ema|x_ema_decay_at

mutation: $(STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	$(VENV)/bin/mutmut run $(MUTATE)
	@$(VENV)/bin/mutmut results --all true | grep -E '$(MUTATED)' | awk -F': ' '{n[$$NF]++} END { \
	    printf "killed %d, survived %d: mutation score %.1f%%\n", n["killed"], n["survived"], \
	    100 * n["killed"] / (n["killed"] + n["survived"]) }'
	@$(VENV)/bin/mutmut results | grep -E '$(MUTATED)' || true

clean:
	rm -rf $(VENV) .pytest_cache mutants
