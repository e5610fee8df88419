# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: venv browser demo test test-slow test-all lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m hovernet.demo --output-dir demo_output

# headless Chromium for tests/test_view_browser.py: Debian's package (Playwright's own download
# is not used); where it cannot be installed those tests are skipped and say why
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	    { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; } \
	      || echo "warning: could not install chromium: the browser tests will be skipped"; \
	  else echo "warning: no apt-get to install chromium: the browser tests will be skipped"; fi; }

test: venv browser
	$(BIN)/ruff check hovernet tests benchmarks
	$(BIN)/ruff format --check hovernet tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

# the tests marked slow (seams at 4096 px, SIGKILL resume, demo, DDP, cohorts, estimates): CI
# runs them after `make test`
test-slow: venv browser
	$(BIN)/python -m pytest -q -m "slow and not gpu"

test-all: venv browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo_output
