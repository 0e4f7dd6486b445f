"""GPU bring-up kit: one command per phase turns a borrowed GPU machine into
results that can be committed (README "On a GPU machine").

    make gpu-check PHASE=<phase> OUT=<dir> [PYTHON=python3] [DRY_RUN=1]
    python -m gpu_check <phase> --out <dir> [--dry-run]
    python -m gpu_check land <dir>...      copy results into benchmarks/results/
    python -m gpu_check auto-table <result.json>   rnn_ext/auto_table.json ("auto") from a GPU result

Phases (each ends well inside 8 minutes on an H100 and writes at most 8 files):
  first      for a short lease, in one command: smoke on the CUDA backends,
             the cuda-marked tests, the headline benchmark shapes, memcheck
             (gpu_check/first.py; not part of "all")
  test       devices and versions, then the whole pytest suite in parallel
  sanitize   compute-sanitizer memcheck, racecheck, synccheck, initcheck over smoke.py
  probe      microbenchmarks: launch latency, grid / cluster / L2-flag barriers,
             host cost per step of each backend's time loop
  bench-<c>  one chunk of the GPU benchmark grid (see bench.CHUNKS)
  all        every phase in order

--dry-run runs what a machine without a GPU can (smoke.py on the CPU
backends, the benchmark chunks with --quick sizes, the report writing), so a
broken kit fails in `make test` (tests/test_gpu_check.py) and not on the GPU.
"""
