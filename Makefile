# make test   set up (venv, dependencies, build) and run every test
# make bench  set up and run the benchmark against torch.nn
# Set-up is done once and reused; a fresh machine needs a few minutes.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed
BUILT  := $(VENV)/.ext-built
SOURCES := setup.py $(shell find csrc -name '*.h' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu')
export MAX_JOBS ?= 2

.PHONY: test bench build ctest pytest clean

test: pytest ctest

bench: $(BUILT)
	$(PY) -m benchmarks $(BENCH_ARGS)

build: $(BUILT)

$(DEPS): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(BUILT): $(DEPS) $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

pytest: $(BUILT)
	$(PY) -m pytest -q tests

# The kernels as a plain C++ (and CUDA, where nvcc is found) library, built
# without PyTorch, and their C++ tests.
ctest: $(DEPS)
	$(VENV)/bin/cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	$(VENV)/bin/cmake --build build/cmake --parallel $(MAX_JOBS)
	cd build/cmake && ../../$(VENV)/bin/ctest --output-on-failure

clean:
	rm -rf build *.egg-info rnn_ext/*.so $(BUILT)
