# Every target creates the environment it needs (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the builds this project is tested with; basicsr 1.4.2 is an
# sdist whose build imports torch, hence torch first and --no-build-isolation (which also lets
# setup.py compile the packed engine's C++ extension against that torch).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-fast demo clean

ENGINE_SOURCES := $(wildcard bsr_plugin/deploy/engine/csrc/*) bsr_plugin/deploy/engine/build.py

$(BIN)/.installed: pyproject.toml setup.py $(ENGINE_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "setuptools>=64" wheel
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q --no-build-isolation -e ".[all,test]"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# the fast lane: every test but the end-to-end ones (real commands, training, compiling),
# for a developer between edits; `make test` runs everything and is what CI runs
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

demo: install
	$(BIN)/bsr demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) experiments results tb_logger build bsr_plugin/deploy/engine/_C*.so
