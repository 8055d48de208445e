# Galeno: every target installs what it needs into .venv first (idempotent, keyed on pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= corpus,dev
PYTEST_ARGS ?=
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install demo test test-fast corpus-shared bench clean help
help:
	@echo "make demo | test | test-fast | corpus-shared | bench | clean"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

demo: install  ## the main job end to end on the shipped sample (local Ray)
	$(PY) jobs/clean_corpus.py --config configs/corpus/sample.yaml
	@echo "report: artifacts/corpus-sample/report.md"

test: install  ## everything CI runs
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

corpus-shared: install  ## the corpus job on all of ../shared/data
	$(PY) jobs/clean_corpus.py --config configs/corpus/shared.yaml

bench: install
	$(PY) -m pip install -q -e ".[corpus,dev,bench]"
	$(PY) benchmarks/corpus_throughput.py

clean:
	rm -rf artifacts .pytest_cache
