# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it
# the exact versions in requirements/constraints.txt (the ones the suite passed with; `make lock`
# refreshes them). GPU users pass their own torch: make test TORCH="torch==2.13.0+cu128".
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= requirements/constraints.txt
PIP := $(BIN)/python -m pip install -q -c $(CONSTRAINTS)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: venv browser demo test test-slow test-all lint bench clean lock

# pip and setuptools pinned too, and the package built with them (no build isolation: an
# isolated build would fetch the newest setuptools)
$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) pip setuptools
	$(PIP) "$(TORCH)"
	$(PIP) --no-build-isolation -e ".[test]"
	$(BIN)/python -m pip check
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

# re-resolve pyproject.toml's ranges in a throw-away venv and rewrite requirements/constraints.txt
lock:
	TORCH="$(TORCH)" scripts/lock_requirements.sh $(PYTHON)
