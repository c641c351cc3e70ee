PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench gpu-check mutation clean

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

# every system's smoke preset, evaluate and predict on --device cuda (needs a GPU)
gpu-check: setup
	scripts/gpu_check.sh

# mutation testing of the modules listed in scripts/mutation.py (not in CI; ~1 h on 2 cores)
mutation: setup
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e ".[test,dev]"
	$(BIN)/python scripts/mutation.py --json runs/mutation.json

clean:
	rm -rf runs .pytest_cache mutants
