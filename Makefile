PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STATE_DIR ?= $(CURDIR)/.palyra-state

.PHONY: run test lint bench chaos clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/palyrad --state-dir $(STATE_DIR)

test: $(STAMP)
	$(BIN)/ruff check palyra actors supervisors surfaces tests bench examples
	$(BIN)/python -m pytest -q -p no:cacheprovider

chaos: $(STAMP)
	$(BIN)/python -m pytest -q -m chaos

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check palyra actors supervisors surfaces tests bench examples

clean:
	rm -rf $(VENV) .palyra-state
