VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: test demo demo-model lint bench clean browser-deps

$(PY):
	python3 -m venv $(VENV)

# torch is pinned first so the CPU build on disk is used; CUDA users install their own torch beforehand.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP) browser-deps
	$(PY) -m pytest -q -n 2 --dist loadfile

# Headless Chromium for tests/test_server_browser.py (Debian's packages); without apt or root the test is skipped.
browser-deps:
	-@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (command -v apt-get >/dev/null && apt-get update -q && apt-get install -y -q chromium chromium-driver) || \
	  echo "browser-deps: chromium not installed; the browser test will be skipped"

demo: $(STAMP)
	$(VENV)/bin/diffblocks demo

# Regenerates the data set and retrains the bundled demo model into diffblocks/assets/demo_model (CPU, see its README).
demo-model: $(STAMP)
	$(PY) -m diffblocks.demo_data.recipe --work build/demo_model
	$(PY) bench/prompt_adherence.py --model diffblocks/assets/demo_model --out-dir build/demo_model/adherence

lint: $(STAMP)
	$(VENV)/bin/ruff check diffblocks tests bench

bench: $(STAMP)
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
