# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: venv demo test test-all lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m hovernet.demo --output-dir demo_output

test: venv
	$(BIN)/ruff check hovernet tests benchmarks
	$(BIN)/ruff format --check hovernet tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-all: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo_output
