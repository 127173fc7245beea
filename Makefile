# famlab: `make train` and `make test` set up .venv on first use, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: help setup train test test-fast lint format bench gpu-check clean
help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install famlab with its dev tools

train: $(VENV)/.installed  ## train the default experiment (embedded corpus, ~5 min on 2 CPU cores)
	$(OFFLINE) $(PY) train.py $(ARGS)

# one worker per core, at most 4 (each test process runs one intra-op thread); TEST_WORKERS=0 runs serially
TEST_WORKERS ?= auto --maxprocesses 4
test: $(VENV)/.installed  ## the whole test suite, slow tests included (what CI runs)
	$(OFFLINE) $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) $(ARGS)

test-fast: $(VENV)/.installed  ## the test suite without tests marked slow
	$(OFFLINE) $(PY) -m pytest -q -m "not slow" -p no:cacheprovider -n $(TEST_WORKERS) $(ARGS)

lint: $(VENV)/.installed  ## ruff lint + format check (pyproject.toml [tool.ruff]); CI runs it before the tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed  ## apply ruff's safe fixes and format the code
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(VENV)/.installed  ## every benchmark script (prints ratios; figures go in benchmarks/README.md)
	for b in throughput optimizer_step position attention; do $(OFFLINE) $(PY) benchmarks/$$b.py || exit 1; done

gpu-check: $(VENV)/.installed  ## on a CUDA machine: gpu tests, GPU training, benchmarks, a claim sweep (<= 10 min; docs/gpus.md); else prints the plan
	$(OFFLINE) $(PY) scripts/gpu_check.py $(ARGS)

clean:  ## remove outputs/ (runs, checkpoints) - asks first
	@read -p "delete outputs/? [y/N] " a && [ "$$a" = y ] && rm -rf outputs
