# Staged batch pipeline. Each stage's target is the manifest it writes last, so make
# reruns only what changed and never takes a half-written folder for a finished one.
# `make help` lists the targets.

DATASET ?= synthetic
CONFIG  ?= configs/$(DATASET).yaml
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
D       := data/$(DATASET)
RUN     := $(PY) -m pipeline
CODE    := $(shell find pipeline features models -name '*.py' 2>/dev/null) pyproject.toml
DEPS    := $(CONFIG) $(CODE)
ENV     := $(VENV)/.installed
BENCH_ENV := $(VENV)/.bench-installed

.DELETE_ON_ERROR:
.PHONY: all help venv ingest split recall features train-fm train-rank rank evaluate report \
        test lint bench bench-recall bench-rank bench-fm clean

## all: run every stage on DATASET (default: the embedded synthetic data)
all: report

## help: list the targets
help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

$(ENV): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

## venv: create .venv and install the project with pinned dependencies
venv: $(ENV)

# xlearn builds from source (cmake, g++; about a minute); the FM benchmark reports it
# where it built and carries on without it where it did not.
$(BENCH_ENV): pyproject.toml | $(ENV)
	$(VENV)/bin/pip install -q -e '.[dev,bench]'
	USER=$${USER:-bench} $(VENV)/bin/pip install -q xlearn==0.40a1 || echo "xlearn did not build: bench-fm runs without it"
	touch $@

$(D)/raw/manifest.json: $(DEPS) | $(ENV)
	$(RUN) ingest --config $(CONFIG)
$(D)/split/manifest.json: $(D)/raw/manifest.json $(DEPS)
	$(RUN) split --config $(CONFIG)
$(D)/recall/manifest.json: $(D)/split/manifest.json $(DEPS)
	$(RUN) recall --config $(CONFIG)
$(D)/models/fm/manifest.json: $(D)/recall/manifest.json $(DEPS)
	$(RUN) train-fm --config $(CONFIG)
$(D)/features/manifest.json: $(D)/models/fm/manifest.json $(DEPS)
	$(RUN) features --config $(CONFIG)
$(D)/models/ranker/manifest.json: $(D)/features/manifest.json $(DEPS)
	$(RUN) train-rank --config $(CONFIG)
$(D)/rank/manifest.json: $(D)/models/ranker/manifest.json $(DEPS)
	$(RUN) rank --config $(CONFIG)
$(D)/eval/manifest.json: $(D)/rank/manifest.json $(DEPS)
	$(RUN) evaluate --config $(CONFIG)
$(D)/report/manifest.json: $(D)/eval/manifest.json $(DEPS)
	$(RUN) report --config $(CONFIG)
	@echo "report: $(D)/report/index.html"

## ingest: load and validate the source into data/DATASET/raw
ingest: $(D)/raw/manifest.json
## split: leak-free train/valid/test split into data/DATASET/split
split: $(D)/split/manifest.json
## recall: fit recall channels, merge candidates into data/DATASET/recall
recall: $(D)/recall/manifest.json
## train-fm: FM/FFM models, roll-forward, scoring both phases' candidates
train-fm: $(D)/models/fm/manifest.json
## features: ranker features per candidate into data/DATASET/features
features: $(D)/features/manifest.json
## train-rank: LightGBM rankers on valid-phase candidates into data/DATASET/models/ranker
train-rank: $(D)/models/ranker/manifest.json
## rank: top-k recommendations per test user into data/DATASET/rank
rank: $(D)/rank/manifest.json
## evaluate: offline metrics into data/DATASET/eval/metrics.json
evaluate: $(D)/eval/manifest.json
## report: HTML report into data/DATASET/report/index.html
report: $(D)/report/manifest.json

## test: the test suite (unit, integration, and ML-100K checks when ../shared has it)
test: $(ENV)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

## lint: ruff
lint: $(ENV)
	$(VENV)/bin/ruff check .

## bench: every benchmark, results in benchmarks/RESULTS.md
bench: $(BENCH_ENV)
	OMP_NUM_THREADS=1 $(PY) -m benchmarks

## bench-recall: BM25 vs bm25s and ANN vs exact search; last line is one JSON object
bench-recall: $(BENCH_ENV)
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.bench_recall

## bench-rank: the full pipeline's ablation on ML-100K, a no-timestamp count log and synthetic
bench-rank: $(ENV)
	$(PY) -m benchmarks.bench_ranking

## bench-fm: FM/FFM throughput and AUC vs torchfm and xlearn; last line is one JSON object
bench-fm: $(BENCH_ENV)
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.bench_fm

## clean: remove DATASET's stage outputs (inputs the user placed under data/ are kept)
clean:
	rm -rf $(D)/raw $(D)/split $(D)/recall $(D)/features $(D)/models $(D)/rank $(D)/eval $(D)/report
