# Staged batch pipeline. Each stage's target is the manifest it writes last, so make
# reruns only what changed and never takes a half-written folder for a finished one.
# The stage rules are generated from the stage table (pipeline/catalogue.py) into
# .make/stages.mk: a stage reruns when a stage it reads reran, when the config sections
# it reads change, or when its own code does. `make help` lists the targets.

DATASET ?= synthetic
CONFIG  ?= configs/$(DATASET).yaml
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
D       := data/$(DATASET)
RUN     := $(PY) -m pipeline
CODE    := $(shell find pipeline features models -name '*.py' 2>/dev/null)
ENV     := $(VENV)/.installed
STAGE_RULES := .make/stages.mk
BENCH_ENV := $(VENV)/.bench-installed

.DELETE_ON_ERROR:
.PHONY: ALWAYS all help venv ingest split recall features train-fm train-rank rank evaluate report publish \
        scheduled recommend serve test lint bench bench-recall bench-rank bench-scale bench-serve bench-fm bench-cuda clean

## all: run every stage on DATASET (default: the embedded synthetic data), publish if the gate passes
# A scheduled run in one process (one start-up instead of a dozen: 182 s -> 148 s on the
# synthetic default); the stamps first, so the stage targets see it as up to date.
all: $(ENV)
	$(RUN) stamps --config $(CONFIG)
	$(RUN) schedule --config $(CONFIG)
	@echo "report: $(D)/report/index.html"
	@echo "published: $(D)/publish/current/recommendations.parquet"

## scheduled: a scheduled run (lock, reuse, gate, publish, ledger); AS_OF=<time> FORCE=1
scheduled: $(ENV)
	$(RUN) schedule --config $(CONFIG) $(if $(AS_OF),--as-of $(AS_OF)) $(if $(FORCE),--force)

## recommend: one user's list from the live publication as JSON; USER_ID=<id> [K=<n>]
recommend: $(ENV)
	$(RUN) recommend --config $(CONFIG) --user $(USER_ID) $(if $(K),-k $(K))

## serve: the HTTP service on the live publication (127.0.0.1:PORT, default 8000)
serve: $(ENV)
	$(RUN) serve --config $(CONFIG) $(if $(PORT),--port $(PORT))

## help: list the targets
help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

$(ENV): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,tracking,dask,serve]'
	touch $@

## venv: create .venv and install the project with pinned dependencies
venv: $(ENV)

# xlearn builds from source (cmake, g++; about a minute); the FM benchmark reports it
# where it built and carries on without it where it did not.
$(BENCH_ENV): pyproject.toml | $(ENV)
	$(VENV)/bin/pip install -q -e '.[dev,bench]'
	USER=$${USER:-bench} $(VENV)/bin/pip install -q xlearn==0.40a1 || echo "xlearn did not build: bench-fm runs without it"
	touch $@

$(STAGE_RULES): $(CODE) | $(ENV)
	@mkdir -p $(@D)
	$(RUN) makefile > $@.tmp && mv $@.tmp $@

ALWAYS:

# The generated rules are only needed (and only built) for the stage targets.
NO_STAGES := all help venv clean scheduled recommend serve test lint bench bench-recall bench-rank bench-scale bench-serve bench-fm bench-cuda
ifneq ($(filter-out $(NO_STAGES),$(or $(MAKECMDGOALS),all)),)
include $(STAGE_RULES)
endif

# The stage targets (`<stage>: <the manifest it writes>`) are generated too:
## ingest: load and validate the source into data/DATASET/raw
## split: leak-free train/valid/test split into data/DATASET/split
## recall: fit recall channels, merge candidates into data/DATASET/recall
## train-fm: FM/FFM models, roll-forward, scoring both phases' candidates
## features: ranker features per candidate into data/DATASET/features
## train-rank: LightGBM rankers on valid-phase candidates into data/DATASET/models/ranker
## rank: top-k per test request and per published user into data/DATASET/rank
## evaluate: offline metrics into data/DATASET/eval/metrics.json
## report: HTML report into data/DATASET/report/index.html
## publish: every active user's top list and what serves it into data/DATASET/publication

## test: the test suite (unit, integration, and ML-100K checks when ../shared has it)
test: $(ENV)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

## lint: ruff (style, imports, complexity)
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

## bench-scale: the large profile through every stage at SIZES users (default 100k,300k,1M; hours)
bench-scale: $(ENV)
	SIZES=$(or $(SIZES),100000,300000,1000000) $(PY) -m benchmarks.bench_scale

## bench-serve: the HTTP service's latency (steady 100/s and saturated) and memory, loopback only
bench-serve: $(ENV)
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.bench_serve

## bench-fm: FM/FFM throughput and AUC vs torchfm and xlearn; last line is one JSON object
bench-fm: $(BENCH_ENV)
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.bench_fm

## bench-cuda: FM/FFM at large batches and a sequence epoch on synthetic-large, CUDA vs this CPU
bench-cuda: $(ENV)
	$(PY) -m benchmarks.bench_cuda

## clean: remove DATASET's stage outputs (inputs the user placed under data/ are kept)
clean:
	rm -rf $(D)/raw $(D)/split $(D)/recall $(D)/features $(D)/models $(D)/rank $(D)/eval \
	       $(D)/report $(D)/publication $(D)/.stamps
	@echo "kept: $(D)/publish (live publications) and $(D)/runs.jsonl (the run ledger)"
