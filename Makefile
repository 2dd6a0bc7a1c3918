# napari-care: `make demo` (the main job) and `make test`. Both set up .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# napari needs an X server; use Xvfb when no display is present.
XRUN := $(if $(DISPLAY),,xvfb-run -a -s "-screen 0 1600x1000x24")
export QT_QPA_PLATFORM ?= xcb

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(PY) $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(XRUN) $(BIN)/python scripts/demo.py --out demo-output

test: $(STAMP)
	$(XRUN) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf demo-output .pytest_cache build *.egg-info
