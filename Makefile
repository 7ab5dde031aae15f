# The two commands a fresh machine needs: `make demo` and `make test`.
# Each creates the virtual environment (.venv) first if it is missing or out of date.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= dev,ray,pitch,speaker
WORKSPACE ?= demo-workspace

.PHONY: demo test lint bench install install-gpu clean-demo

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)

GPU_STAMP := $(VENV)/.gpu-stamp
# faiss-gpu replaces faiss-cpu (the two packages write the same files): a swap, not an extra.
$(GPU_STAMP): $(STAMP)
	$(PY) -m pip uninstall -y -q faiss-cpu
	$(PY) -m pip install --quiet --force-reinstall --no-deps "faiss-gpu-cu12>=1.13,<1.15" \
		"nvidia-cuda-runtime-cu12>=12.1" "nvidia-cublas-cu12>=12.1"
	@touch $(GPU_STAMP)

install-gpu: $(GPU_STAMP)

demo: $(STAMP) $(if $(GPU),$(GPU_STAMP))
	$(VENV)/bin/recsys --workspace $(WORKSPACE) demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/run_all.py

clean-demo:
	rm -rf $(WORKSPACE)
