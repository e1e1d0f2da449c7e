PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PYTHONHASHSEED := 0

.PHONY: install test test-all lint bench demo train-default clean

install: $(BIN)/ecgdig

$(BIN)/ecgdig: pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(BIN)/ecgdig

test: install
	OMP_NUM_THREADS=2 $(BIN)/pytest -q

test-all: install
	OMP_NUM_THREADS=2 $(BIN)/pytest -q -m ""

lint: install
	$(BIN)/ruff check ecgdig tests benchmarks
	$(BIN)/ruff format --check ecgdig tests benchmarks

bench: install
	OMP_NUM_THREADS=2 $(BIN)/python -m benchmarks.run --out docs/benchmarks-latest.md

demo: install
	$(BIN)/ecgdig digitize sample_pages/ -o demo_out/ --overlay --force
	@echo "Wrote demo_out/: WFDB records (.hea/.dat), JSON sidecars and overlay PNGs."

clean:
	rm -rf $(VENV) demo_out .pytest_cache
