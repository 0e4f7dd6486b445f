# make test   set up (venv, dependencies, build) and run every test
# make bench  set up and run the benchmark against torch.nn
# Set-up is done once and reused; a fresh machine needs a few minutes.
# make gpu-check PHASE=<phase> OUT=<dir> [PYTHON=python3] [DRY_RUN=1]
#             the GPU bring-up kit (gpu_check/, README "On a GPU machine"):
#             the machine's own python, no venv, nothing installed

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed
BUILT  := $(VENV)/.ext-built
SOURCES := setup.py $(shell find csrc -name '*.h' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu')
export MAX_JOBS ?= 2

.PHONY: test bench build ctest pytest clean gpu-check

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

# The suite on PYTEST_WORKERS processes (pytest-xdist; tests that share a
# costly fixture carry one xdist_group, which --dist loadgroup keeps on one
# worker).  PYTEST_WORKERS=0 runs it in this process, serially.
# RNN_EXT_CHECK_XDIST_GROUPS: tests/test_xdist_groups.py checks the grouping
# here (with the pinned pytest), not on machines with their own pytest.
PYTEST_WORKERS ?= 2
pytest: $(BUILT)
	RNN_EXT_CHECK_XDIST_GROUPS=1 $(PY) -m pytest -q $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup) tests

# The kernels' C++ tests, built without PyTorch.  The CUDA kernels are left
# out here (RNN_EXT_CUDA=OFF; see CMakeLists.txt): pytest already compiles
# them twice, and no C++ test runs them.
ctest: $(DEPS)
	$(VENV)/bin/cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release -DRNN_EXT_CUDA=OFF > /dev/null
	$(VENV)/bin/cmake --build build/cmake --parallel $(MAX_JOBS)
	cd build/cmake && ../../$(VENV)/bin/ctest --output-on-failure

# The extension is built in place with that python (all cores, sm_90 unless
# TORCH_CUDA_ARCH_LIST says otherwise); DRY_RUN=1 skips the build and runs
# what a machine without a GPU can (tests/test_gpu_check.py does).
# PHASE=build only builds.
# PHASE defaults to all (every phase in turn; on a lent GPU run them one by one, each inside a command's time limit).
PHASE ?= all
# The kit's python: PYTHON when given, else this checkout's .venv where there is one
# (a dry run here), else python3 (the GPU machine's, with its own torch).
KIT_PYTHON = $(if $(filter command line environment,$(origin PYTHON)),$(PYTHON),$(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,$(PYTHON)))
GPU_PHASES = build first test sanitize probe all $(foreach d,fp32 fp16 bf16,$(foreach c,lstm gru rnn,bench-$(d)-$(c)))
gpu-check:
	@if [ -z "$(filter $(PHASE),$(GPU_PHASES))" ] || [ -z "$(OUT)$(filter build,$(PHASE))" ]; then \
	  echo "usage: make gpu-check PHASE=<phase> OUT=<dir> [PYTHON=python3] [DRY_RUN=1]"; \
	  echo "phases: $(GPU_PHASES)"; exit 2; fi
ifneq ($(DRY_RUN),1)
	TORCH_CUDA_ARCH_LIST="$${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS=$$(nproc) $(KIT_PYTHON) setup.py build_ext --inplace -q
endif
ifneq ($(PHASE),build)
	$(KIT_PYTHON) -m gpu_check $(PHASE) --out $(OUT) $(if $(filter 1,$(DRY_RUN)),--dry-run)
endif

clean:
	rm -rf build *.egg-info rnn_ext/*.so $(BUILT)
