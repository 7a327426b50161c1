# The two commands a newcomer runs (README): `make demo` and `make test`.
# Both set up what is missing first (tools/setup.sh is idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test docs setup lint bench bench-peers clean

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
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir .docs-site

# The docs/ pages and the API reference as a site in site/ (mkdocs, Material theme).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

setup:
	@VENV=$(VENV) bash tools/setup.sh

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Benchmarks run in their own environment so peers (napari-wsi) never enter the test one.
BENCH_VENV := .bench/venv
$(BENCH_VENV)/.installed: pyproject.toml
	mkdir -p .bench
	[ -x $(BENCH_VENV)/bin/python ] || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -e . "napari-wsi[openslide]==1.3.0" 2>&1 | grep -v "^WARNING: Location" || true
	$(BENCH_VENV)/bin/python -c "import napari_mitosis, napari_wsi"
	touch $@

bench: $(BENCH_VENV)/.installed setup
	$(BENCH_VENV)/bin/python benchmarks/bench_reader.py
	$(PY) benchmarks/bench_segment.py
	$(PY) benchmarks/bench_detect.py
	$(PY) benchmarks/bench_classify.py
	$(PY) benchmarks/bench_cohort.py

# Peers for benchmarks/bench_vs_peers.py, each in its own environment (never a package
# dependency): WSInfer pins zarr < 3; TIAToolbox 2.1 pins torch < 2.13, so its environment
# gets torch 2.9.1 (a multi-GB download) and napari-mitosis beside it, timed on that torch too.
PEERS_VENV := .bench/peers
$(PEERS_VENV)/.installed: pyproject.toml
	mkdir -p .bench
	[ -x $(PEERS_VENV)/bin/python ] || python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 wsinfer==0.6.1 "zarr<3" openslide-python openslide-bin 2>&1 | grep -v "^WARNING: Location" || true
	touch $@

TIA_VENV := .bench/tiatoolbox
$(TIA_VENV)/.installed: pyproject.toml
	mkdir -p .bench
	[ -x $(TIA_VENV)/bin/python ] || python3 -m venv $(TIA_VENV)
	$(TIA_VENV)/bin/python -m pip install -q -U pip 2>&1 | grep -v "^WARNING: Location" || true
	$(TIA_VENV)/bin/python -m pip install -q tiatoolbox==2.1.3 torch==2.9.1 torchvision==0.24.1 -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(TIA_VENV)/bin/python -c "import tiatoolbox, napari_mitosis"
	touch $@

bench-peers: $(PEERS_VENV)/.installed $(TIA_VENV)/.installed setup
	$(PY) benchmarks/bench_vs_peers.py

clean:
	rm -rf $(VENV) demo-output .bench .pytest_cache .ruff_cache site .docs-site
