VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: test demo demo-model lint bench clean

$(PY):
	python3 -m venv $(VENV)

# torch is pinned first so the CPU build on disk is used; CUDA users install their own torch beforehand.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

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
