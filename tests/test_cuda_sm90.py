"""The CUDA kernels compile for sm_90 (H100) within the resources their
launches need, checked on any machine with nvcc, GPU or not: no register
spills, no local-memory stack, and registers x threads of the persistent
kernels within one SM's register file (a cooperative launch needs every
block resident)."""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
REGISTERS_PER_SM = 65536
PERSISTENT_THREADS = 256  # kPersistentThreads in csrc/cuda/persistent.h

pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc")


def _ptxas_report(source, tmp_path):
    cmd = [NVCC, "-std=c++17", "-O3", "-arch=sm_90", f"-I{ROOT}/csrc", f"-I{ROOT}/csrc/include",
           "-Xptxas", "-v", "-c", os.path.join(ROOT, source), "-o", str(tmp_path / "k.o")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    kernels, current = {}, None
    for line in out.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for 'sm_90'", line)
        if m:
            current = m.group(1)
            kernels[current] = {}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            kernels[current].update(stack=int(m.group(1)), spill=int(m.group(2)) + int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            kernels[current]["registers"] = int(m.group(1))
    return kernels


@pytest.mark.parametrize("source", ["csrc/cuda/persistent.cu", "csrc/cuda/rnn_cuda.cu"])
def test_kernels_fit_sm90(source, tmp_path):
    kernels = _ptxas_report(source, tmp_path)
    assert kernels, "ptxas reported no kernel"
    for name, r in kernels.items():
        assert r.get("spill", 0) == 0, f"{name} spills registers: {r}"
        assert r.get("stack", 0) == 0, f"{name} uses a local-memory stack: {r}"
        if "persistent" in source:
            assert r["registers"] * PERSISTENT_THREADS <= REGISTERS_PER_SM, f"{name}: {r}"
    if "persistent" in source:  # forward and backward, LSTM, GRU and RNN, four dtypes
        assert len(kernels) == 24, sorted(kernels)
