# Two commands for a new user: `make demo` (set up, then run the main job on the default data)
# and `make test` (set up, then run the test suite). `make setup` alone builds .venv once; it is
# a no-op while constraints.txt and setup.py are unchanged.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: constraints.txt setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade 'pip==24.2'
	$(BIN)/pip install --progress-bar off --ignore-requires-python -c constraints.txt -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/hap demo --out $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
