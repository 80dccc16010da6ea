# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

# The tests also need what the demo does not: pytest, the Hugging Face references
# (torch's CPU wheel, transformers), tokamax, and libtpu (~700 MB) to compile for TPU
# topologies without a TPU.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,test,tpu]'
	touch $(TEST_STAMP)

install: $(STAMP)

# The main job: a short growth study (G_stack vs scratch at equal FLOPs, 3 paired seeds)
# on the embedded offline corpus, JOBS runs at a time, then its report with the
# compute-saved table, its 95% CIs and plots; the headline is printed at the end.
JOBS ?= 2
demo: $(STAMP)
	$(PY) launch.py sweep demo --jobs $(JOBS)
	$(PY) launch.py report runs/demo --baseline scratch
	@grep '^Headline:' runs/demo/report.md
	@echo "report: runs/demo/report.md"

test: $(TEST_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

bench: $(STAMP)
	$(PY) bench/bench_step.py

clean:
	rm -rf runs .pytest_cache
