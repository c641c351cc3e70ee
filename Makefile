PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(BIN)/detectlab

$(BIN)/detectlab: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e ".[test]"
	@touch $(BIN)/detectlab

demo: setup
	$(BIN)/detectlab demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	for s in adversarial seizure violence fluid lesions; do $(BIN)/detectlab bench $$s --size smoke || exit 1; done

clean:
	rm -rf runs .pytest_cache
