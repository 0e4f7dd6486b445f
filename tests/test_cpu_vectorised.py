"""The CPU step loops are vectorised: each *_rows function's AVX-512 clone
(csrc/cpu/rnn_cpu.h) uses 512-bit registers.

A loop the compiler gives up on still gives the right numbers, so no parity
test notices; it only runs several times slower.  That happened once: a `?:`
in the host tanh (gate_math.h) made GCC 12 compile every fp32 loop that
calls tanh as scalar code, a third of a CPU LSTM step; and GCC left the
LSTM backward's element function out of line, a call per element.  This reads the
built extension's machine code, so it needs binutils (nm, objdump) and an
x86-64 build; elsewhere it skips.
"""
import platform
import shutil
import subprocess

import pytest

import rnn_ext._C as _C

ROWS = ("lstm_forward_rows", "lstm_backward_rows", "gru_forward_rows", "gru_backward_rows",
        "rnn_forward_rows", "rnn_backward_rows", "proj_grad_rows")


def _clones():
    """{(function, storage type): (start, end)} of the AVX-512 clones."""
    if platform.machine() != "x86_64" or not (shutil.which("nm") and shutil.which("objdump")):
        pytest.skip("needs an x86-64 build and binutils")
    out = subprocess.run(["nm", "-C", "-S", _C.__file__], capture_output=True, text=True,
                         check=True).stdout
    found = {}
    for line in out.splitlines():
        if "[clone .arch_x86_64_v4]" not in line:
            continue
        addr, size, _, name = line.split(maxsplit=3)
        for fn in ROWS:
            marker = f"rnn_ext::cpu::{fn}<"
            if marker in name:
                storage = name.split(marker, 1)[1].split(",", 1)[0]
                found[(fn, storage)] = (int(addr, 16), int(addr, 16) + int(size, 16))
    if not found:
        pytest.skip("the extension has no AVX-512 clones (not built with GCC's target_clones)")
    return found


@pytest.fixture(scope="session")
def clones():
    return _clones()


def _disassembly(start, end):
    return subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", f"--start-address={start}",
                           f"--stop-address={end}", _C.__file__], capture_output=True, text=True,
                          check=True).stdout.splitlines()


# fp32 everywhere; the 16-bit storage types for the forward loops (their
# backward GRU loop is still scalar: see benchmarks/NOTES.md).  fp64 keeps
# libm's exp and tanh, calls that do not vectorise.
CASES = [(fn, "float") for fn in ROWS] + [
    (fn, t) for fn in ("lstm_forward_rows", "gru_forward_rows", "rnn_forward_rows")
    for t in ("c10::Half", "c10::BFloat16")]


@pytest.mark.parametrize("fn,storage", CASES, ids=[f"{f}-{t.split(':')[-1]}" for f, t in CASES])
def test_step_loop_uses_512_bit_vectors(clones, fn, storage):
    assert (fn, storage) in clones, f"no AVX-512 clone of {fn}<{storage}> in {_C.__file__}"
    code = _disassembly(*clones[(fn, storage)])
    assert any("%zmm" in line for line in code), \
        f"{fn}<{storage}>'s AVX-512 clone has no zmm instruction: the loop ran scalar"
    # Nothing but memset is called: an element function left out of line
    # (lstm_backward_active once was) is a scalar call per element.
    calls = [line.split("call", 1)[1].strip() for line in code if "\tcall" in line]
    assert all("memset" in c or "memcpy" in c for c in calls), \
        f"{fn}<{storage}>'s AVX-512 clone calls out of its loop: {sorted(set(calls))}"
