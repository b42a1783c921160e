# q1net: every target sets up .venv/ first when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/q1net.yaml
DATA ?=
VAL ?= $(DATA)
ARGS ?=

DATA_ARGS := $(if $(DATA),--data configs/data/folder.yaml --data.train_source.init_args.root=$(DATA) --data.val_source.init_args.root=$(VAL))

.PHONY: help setup train test test-full fuzz bench collection-bench reproduce gpu-data train-gpu card export lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP)  ## create .venv/ with q1net and every dependency (pinned, one pip command)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch, torchvision and executorch are pinned in pyproject.toml and resolved together here
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

train: $(STAMP)  ## train the baseline on built-in synthetic data (DATA=folder [VAL=folder] for your photos; CONFIG=..., ARGS=...)
	$(BIN)/q1net train --config $(CONFIG) $(DATA_ARGS) $(ARGS)

test: $(STAMP)  ## the default suite (what CI runs)
	$(BIN)/pytest -q

test-full: $(STAMP)  ## every test, the slow ones too
	$(BIN)/pytest -q -m ""

fuzz: $(STAMP)  ## the long fuzz run: 10,000 mutated PNG/JPEG files through the loader and the predictor
	Q1NET_FUZZ_EXAMPLES=10000 $(BIN)/pytest -q tests/test_fuzz.py

bench: $(STAMP)  ## measure latency, throughput, training speed and memory here: bench/results.{json,md}
	$(BIN)/q1net bench --out bench

PHOTOS ?= ../shared/data/train
collection-bench: $(STAMP)  ## whole-collection figures (20,000 files, kill and resume, tar shards, 2 processes): runs/collection/
	$(BIN)/python -m q1net.tools.collection_bench --photos $(PHOTOS) --out runs/collection $(ARGS)

BUDGET ?= 3
TEST ?=
QUALITY_STEP ?= 3
reproduce: $(STAMP)  ## the paper's Tables 2 and 3: BUDGET=minutes per network, DATA=train VAL=val TEST=test folders
	@test -n "$(DATA)" -a -n "$(VAL)" -a -n "$(TEST)" || { echo "make reproduce needs DATA=, VAL= and TEST= image folders" >&2; exit 2; }
	$(BIN)/q1net reproduce --budget $(BUDGET) --train $(DATA) --val $(VAL) --test $(TEST) --quality-step $(QUALITY_STEP) $(ARGS)

CARD_STEP ?= 3
CARD := $(BIN)/q1net evaluate --quality-step $(CARD_STEP)
card: $(STAMP)  ## re-measure the model card's honest-answer tables (TEST= photo folder, CARD_STEP= quality step): docs/eval/
	@test -n "$(TEST)" || { echo "make card needs TEST= (the test photos)" >&2; exit 2; }
	$(CARD) $(TEST) --out docs/eval/test-aligned
	$(CARD) $(TEST) --grid-offset random --out docs/eval/test-offgrid
	$(CARD) $(TEST) --subsampling 4:2:2 --grid-offset random --out docs/eval/test-422
	$(CARD) $(TEST) --subsampling 4:4:4 --out docs/eval/test-444
	$(CARD) $(TEST) --grayscale --out docs/eval/test-gray
	$(CARD) $(TEST) --tables annex_k --subsampling 4:2:2 --out docs/eval/test-annex_k
	$(CARD) $(TEST) --tables flat --subsampling 4:2:2 --out docs/eval/test-flat
	$(CARD) $(TEST) --quality-min 2 --quality-max 18 --quality-step 16 --tables annex_k --subsampling 4:2:2 --out docs/eval/test-annex_k-multiples
	$(CARD) $(TEST) --upscale 5 --grid-offset random --quality-max 10 --quality-step 1 --out docs/eval/test-large-low
	$(CARD) $(TEST) --upscale 5 --grid-offset random --quality-step 9 --out docs/eval/test-large
	$(CARD) $(TEST) --preset web_high --out docs/eval/test-web_high
	$(CARD) $(TEST) --recompress 90 --out docs/eval/test-recompress90
	$(CARD) --content graphics --count 36 --out docs/eval/graphics
	$(CARD) $(TEST) --quality-min 50 --quality-max 50 --pairs 10,30,50,70,90 --out docs/eval/test-pairs

GPU_DATA ?= .gpu
gpu-data: $(STAMP)  ## pack the photos a GPU run takes along (at most 64 MiB travel): DATA= and VAL= folders -> $(GPU_DATA)/
	@test -n "$(DATA)" || { echo "make gpu-data needs DATA= (and VAL=) image folders" >&2; exit 2; }
	$(BIN)/q1net data pack $(DATA) $(GPU_DATA)/train.zip --crop 256 --max-mb 44
	$(BIN)/q1net data pack $(VAL) $(GPU_DATA)/val.zip --max-mb 12

MINUTES ?= 7
OUT ?= runs/gpu
train-gpu:  ## the GPU campaign from $(GPU_DATA)/ (make gpu-data first): OUT=folder MINUTES=budget; runs with the machine's own Python too
	$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) -m q1net.tools.gpu_train --packed $(GPU_DATA) --out $(OUT) --minutes $(MINUTES)

export: $(STAMP)  ## export the shipped weights to exports/: ONNX, XNNPACK .pte, Vulkan .pte (fp32, fp16), with parity table
	$(BIN)/q1net export --all --out exports $(ARGS)

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check q1net tests && $(BIN)/ruff format --check q1net tests

clean:  ## remove runs and caches (keeps .venv/)
	rm -rf runs wandb lightning_logs .pytest_cache .ruff_cache
