# The two commands a newcomer runs (README): `make demo` and `make test`.
# Both set up what is missing first (tools/setup.sh is idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup lint bench clean

# With a display, the demo opens a napari window; without one it runs under Xvfb and
# saves a screenshot instead.
demo: setup
ifdef DISPLAY
	$(PY) -m napari_mitosis demo --out demo-output
else
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m napari_mitosis demo --out demo-output --headless
endif

test: setup
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -q
	$(PY) -m ruff check .

setup:
	@VENV=$(VENV) bash tools/setup.sh

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: setup
	$(PY) benchmarks/bench_reader.py

clean:
	rm -rf $(VENV) demo-output .bench .pytest_cache .ruff_cache
