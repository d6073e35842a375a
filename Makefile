# The README's contract: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Cap threads so tests and demos behave the same on a 2-core CI machine.
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2
export OMP_WAIT_POLICY ?= PASSIVE
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: venv demo test bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, exactly this version: a CPU wheel lies on disk; anything else downloads GBs.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,onnx]"
	# ONNX models: onnx2torch without its declared dependencies (it names torchvision, which
	# would replace the CPU torch above; boxhack imports it without torchvision, see
	# boxhack.models.loaders)
	$(PY) -m pip install --quiet --no-deps "onnx2torch>=1.5,<2"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/boxhack reproduce --quick --out runs/demo

test: $(STAMP)
	$(PY) scripts/check-conflict-markers  # a half-resolved merge must not land
	$(VENV)/bin/lint-imports --no-cache  # the layers of docs/architecture.md
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
