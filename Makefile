# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint format docs test-min clean

$(BIN)/gridtsne: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/gridtsne
	$(BIN)/gridtsne all sample_images demo.jpg

test: $(BIN)/gridtsne
	$(BIN)/python -m pytest

# ruff's lint rules and its formatting (pyproject.toml), as CI checks them.
lint: $(BIN)/gridtsne
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/gridtsne
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# docs/cli.md from the --help of every command; tests/test_docs.py fails when it is stale.
docs: $(BIN)/gridtsne
	$(BIN)/python docs/generate_cli_reference.py

# The same tests against the oldest dependency versions pyproject.toml allows.
test-min:
	$(PYTHON) -m venv .venv-min
	.venv-min/bin/pip install --quiet -r requirements-min.txt -e '.[test]'
	.venv-min/bin/python -m pytest

clean:
	rm -rf $(VENV) .venv-min demo.jpg demo.gridtsne .pytest_cache
