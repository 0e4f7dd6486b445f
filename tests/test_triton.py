"""The Triton backend: both strategies (forced) on both sides of the
crossover, against the reference and torch.nn (outputs, workspace, every
gradient), opcheck of the custom ops, torch.compile, buffers poisoned with
NaN, bad input, why_not, and a compile check of every kernel for sm_90.

Without a GPU everything runs under the Triton interpreter on the CPU
(conftest.py sets TRITON_INTERPRET=1), so the shapes are small.  Tests
marked cuda repeat the parity checks on the GPU, with larger shapes and
fp16/bf16 against cuDNN's own error.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import rnn_ext
from _utils import (TOL, assert_all_close, make_inputs, make_module, outputs_and_grads,
                    run_ops, run_torch)
from _utils import tf32
from rnn_ext import functional, reference
from rnn_ext import triton as rnn_triton
from test_ops_errors import GRU_BAD, LSTM_BAD, RNN_BAD, gru_args, lstm_args, rnn_args

HAS_CUDA = torch.cuda.is_available()
# The device the non-cuda tests run on: the interpreter on the CPU here, the
# GPU where there is one (then TRITON_INTERPRET is not set).
DEVICE = "cuda" if HAS_CUDA else "cpu"
TRITON_OK = rnn_ext.backends.why_not("triton", torch.device(DEVICE), torch.float32) is None
pytestmark = pytest.mark.skipif(not TRITON_OK, reason="the Triton backend cannot run here")

from rnn_ext.triton import _ops as _triton_ops  # noqa: E402,F401  (registers torch.ops.rnn_ext.triton_*)
from rnn_ext.triton import _sequence as S  # noqa: E402  (after the interpreter switch)

STRATEGIES = ["persistent", "grid", "step"]


# --------------------------------------------------------------- helpers ----
def _rand(*shape, dtype, device=DEVICE, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(device, dtype).requires_grad_()


def make_args(kind, T, B, H, P=0, bias=True, dtype=torch.float64, device=DEVICE):
    """Differentiable (input_gates, w_hh, b_hh, [w_hr,] h0, [c0]) for one
    layer; kind "lstm", "gru", "rnn_tanh" or "rnn_relu"."""
    n = {"lstm": 4, "gru": 3}.get(kind, 1)
    K = P or H
    w_scale = 1.0 / K ** 0.5
    args = dict(input_gates=_rand(T, B, n * H, dtype=dtype, device=device),
                w_hh=_rand(n * H, K, dtype=dtype, device=device, scale=w_scale),
                b_hh=_rand(n * H, dtype=dtype, device=device, scale=0.5) if bias else None,
                h0=_rand(B, K, dtype=dtype, device=device, scale=0.5))
    if kind == "lstm":
        args["w_hr"] = _rand(P, H, dtype=dtype, device=device, scale=1.0 / H ** 0.5) if P else None
        args["c0"] = _rand(B, H, dtype=dtype, device=device, scale=0.5)
    return args


def run(kind, args, lengths, strategy="reference"):
    """(outputs incl. workspace) of the reference or of the Triton op."""
    L = torch.tensor(lengths) if lengths is not None else None
    if kind == "lstm":
        a = (args["input_gates"], args["w_hh"], args["b_hh"], args["w_hr"], args["h0"], args["c0"])
        if strategy == "reference":
            return reference.lstm_reference(*a, L)
        return rnn_triton.lstm(*a, lengths=L, strategy=strategy)
    a = (args["input_gates"], args["w_hh"], args["b_hh"], args["h0"])
    if kind.startswith("rnn_"):
        nl = kind[len("rnn_"):]
        if strategy == "reference":
            return reference.rnn_reference(*a, L, nonlinearity=nl)
        return rnn_triton.rnn(*a, lengths=L, nonlinearity=nl, strategy=strategy)
    if strategy == "reference":
        return reference.gru_reference(*a, L)
    return rnn_triton.gru(*a, lengths=L, strategy=strategy)


def grads(outputs, args, seed=3):
    """Gradients of a random linear function of every output (workspace
    included) with respect to every input."""
    wrt = [v for v in args.values() if v is not None]
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum()
               for o in outputs)
    return list(torch.autograd.grad(loss, wrt))


def names(kind, args):
    outs = ["output", "h_n", "c_n", "workspace"] if kind == "lstm" else ["output", "h_n", "workspace"]
    return outs, ["grad " + k for k, v in args.items() if v is not None]


def check_against_reference(kind, args, lengths, strategy, tol):
    want = run(kind, args, lengths)
    got = run(kind, args, lengths, strategy)
    out_names, grad_names = names(kind, args)
    for name, g, w in zip(out_names, got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        torch.testing.assert_close(g, w, **tol, msg=lambda m: f"{name}: {m}")
    for name, g, w in zip(grad_names, grads(got, args), grads(want, args)):
        torch.testing.assert_close(g, w, **tol, msg=lambda m: f"{name}: {m}")


class LaunchCounter:
    """Wraps a kernel to count its launches (kernel[grid](...))."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def counted(*args, **kwargs):
            self.launches += 1
            return launch(*args, **kwargs)
        return counted


# ------------------------------------------------------------- crossover ----
def test_crossover_rule():
    """"auto" runs persistent exactly where every kernel of the size, compiled
    for sm_90 (persistent_sm90.json), fits shared memory without spill."""
    f32, f16, f64 = torch.float32, torch.float16, torch.float64
    dtypes = {"fp32": f32, "fp16": f16, "bf16": torch.bfloat16, "fp64": f64}
    admitted = 0
    for (fam, dt, prec, bh, bk, aligned), entries in S._fit.table().items():
        proj = fam == "lstm_proj"
        n_gates = 3 if fam == "gru" else 4
        fits = all(e["shared_bytes"] <= 227 * 1024 and e["spill_bytes"] == 0 for e in entries)
        # Sizes that pad to these tiles with this alignment (a multiple of 16 or not).
        hs = [bh] if aligned else [bh // 2 + 1, bh - 1] if bh > 16 else [1, 15]
        ps = ([bk] if aligned else [bk // 2 + 1, bk - 1] if bk > 16 else [1, 15]) if proj else [0]
        for H in hs:
            for P in ps:
                assert S.use_persistent(n_gates, H, P or H, P, dtypes[dt], None, prec) == fits, (fam, dt, prec, H, P)
        admitted += fits
    assert admitted > 0
    # Past the table: larger tiles than the first size over the limit.
    assert not S.use_persistent(4, 1000, 1000, 0, f16)
    # The old rule (32 KiB of weights) stopped GRU fp16 at H=64; H=128 fits.
    assert S.use_persistent(3, 128, 128, 0, f16) and S.resolve_strategy("auto", 3, 128, 128, 0, f16) == "persistent"
    # ... but an H that is not a multiple of 16 compiles to another kernel, which spills there.
    assert not S.use_persistent(3, 100, 100, 0, f16)
    # Past the fit: the grid kernels (no device named, as under the
    # interpreter), the per-step loop on a GPU until grid has run there.
    assert S.resolve_strategy("auto", 4, 130, 130, 0, f32) == "grid"
    assert S.resolve_strategy("auto", 4, 130, 130, 0, f32, "cuda") == ("grid" if S.GRID_IN_AUTO_ON_GPU else "step")
    assert S.resolve_strategy("step", 4, 8, 8, 0, f32) == "step"
    # By name a spilling kernel may run (slower); fp64 LSTM H=64 spills.
    assert not S.use_persistent(4, 64, 64, 0, f64)
    assert S.resolve_strategy("persistent", 4, 64, 64, 0, f64) == "persistent"


@pytest.mark.parametrize("n_gates,H,P,dtype", [(4, 130, 0, torch.float32), (4, 130, 0, torch.float64),
                                               (3, 130, 0, torch.float32), (3, 130, 0, torch.float64),
                                               (4, 96, 48, torch.float64)],
                         ids=["lstm-H130-fp32", "lstm-H130-fp64", "gru-H130-fp32", "gru-H130-fp64",
                              "lstm-H96-P48-fp64"])
def test_persistent_that_cannot_fit_is_refused_by_name(n_gates, H, P, dtype):
    """The kernels the GPU tests used to force (352 KiB to 2 MiB of shared
    memory): a clear error naming the limit, not OutOfResources after
    minutes of compiling."""
    with pytest.raises(RuntimeError, match=r"strategy 'persistent' cannot run .*(shared memory|larger than any measured).*"
                                           r"227 KiB.*Use strategy 'grid', 'step'"):
        S.resolve_strategy("persistent", n_gates, H, P or H, P, dtype)


def test_persistent_that_cannot_fit_fails_before_any_launch(monkeypatch):
    counters = {n: LaunchCounter(getattr(S.K, n)) for n in dir(S.K) if n.endswith("_kernel")}
    for n, c in counters.items():
        monkeypatch.setattr(S.K, n, c)
    args = make_args("lstm", 2, 2, 130, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="needs? .*KiB of shared memory|227 KiB"):
        run("lstm", args, None, strategy="persistent")
    monkeypatch.setenv(S.STRATEGY_ENV, "persistent")
    with pytest.raises(RuntimeError, match=f"environment variable {S.STRATEGY_ENV}"):
        run("lstm", args, None, strategy=None)
    assert sum(c.launches for c in counters.values()) == 0


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("H,expected", [(8, "persistent"), (40, "grid")])
def test_auto_launches_the_chosen_strategy(kind, H, expected, monkeypatch):
    """Under the interpreter "auto" runs the single-program persistent kernel
    where it fits, else the grid kernel: one launch either way; the step
    loop only by name (T launches)."""
    names_ = {s: f"{kind}_fwd_{s}_kernel" for s in ("persistent", "grid", "step")}
    counters = {s: LaunchCounter(getattr(S.K, n)) for s, n in names_.items()}
    for s, n in names_.items():
        monkeypatch.setattr(S.K, n, counters[s])
    monkeypatch.delenv(S.STRATEGY_ENV, raising=False)
    T = 3
    args = make_args(kind, T, 2, H, dtype=torch.float32)
    run(kind, args, None, strategy=None)
    assert {s: c.launches for s, c in counters.items()} == {s: int(s == expected) for s in counters}
    # The environment variable forces another one.
    for other in ("persistent", "step"):
        if other != expected:
            monkeypatch.setenv(S.STRATEGY_ENV, other)
            run(kind, args, None, strategy=None)
            assert counters[other].launches == (1 if other == "persistent" else T)


@pytest.mark.parametrize("H", [8, 100])
def test_rnn_auto_launches_the_chosen_strategy(H, monkeypatch):
    """RNN keeps one W_hh tile: the crossover rule with n_gates = 1."""
    counters = {s: LaunchCounter(getattr(S.K, f"rnn_fwd_{s}_kernel")) for s in ("persistent", "grid", "step")}
    for s, c in counters.items():
        monkeypatch.setattr(S.K, f"rnn_fwd_{s}_kernel", c)
    monkeypatch.delenv(S.STRATEGY_ENV, raising=False)
    expected = "persistent" if S.use_persistent(1, H, H, 0, torch.float32) else "grid"
    assert expected == ("persistent" if H == 8 else "grid")
    T = 3
    run("rnn_tanh", make_args("rnn_tanh", T, 2, H, dtype=torch.float32), None, strategy=None)
    assert {s: c.launches for s, c in counters.items()} == {s: int(s == expected) for s in counters}


def test_auto_keeps_the_step_loop_on_a_gpu_until_grid_has_run_there():
    """The grid kernels have not run on a GPU: there "auto" keeps the step
    loop past the crossover (they run by name); under the interpreter and
    once enabled, "auto" takes them."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not S.GRID_IN_AUTO_ON_GPU
    for n_gates in (4, 3, 1):
        assert S.resolve_strategy("auto", n_gates, 256, 256, 0, torch.float16, cuda) == "step"
        assert S.resolve_strategy("auto", n_gates, 256, 256, 0, torch.float16, cpu) == "grid"
        assert S.resolve_strategy("grid", n_gates, 256, 256, 0, torch.float16, cuda) == "grid"
        assert S.resolve_strategy("auto", n_gates, 16, 16, 0, torch.float16, cuda) == "persistent"
    assert S.resolve_strategy("auto", 4, 256, 64, 64, torch.float32, cuda) == "step"


# ------------------------------------------------------------ grid strategy ----
@pytest.mark.parametrize("n,programs,align", [(10, 3, 4), (5, 8, 4), (37, 5, 16), (256, 8, 32), (0, 3, 16),
                                              (130, 132, 32), (7, 1, 16), (100, 7, 1)])
def test_grid_slices_are_partition_split(n, programs, align):
    """The grid kernels' slice table is partition::split itself (through
    rnn_ext._C): contiguous slices covering [0, n), whole chunks of `align`
    except the last, sizes differing by at most one chunk, the extra chunks
    on the last programs, empty slices first when programs outnumber chunks."""
    from rnn_ext import _C

    table = S.slice_table(n, programs, align, torch.device("cpu"))
    assert table.dtype == torch.int32 and table.shape == (programs, 2)
    assert [tuple(r) for r in table.tolist()] == [tuple(r) for r in _C._partition_slices(n, programs, align)]
    begins, ends = table[:, 0].tolist(), table[:, 1].tolist()
    assert begins[0] == 0 and ends[-1] == n and begins[1:] == ends[:-1]
    chunks = [-(-(e - b) // align) for b, e in zip(begins, ends)]
    assert all(b % align == 0 for b in begins) and sum(chunks) == -(-n // align)
    assert max(chunks) - min(chunks) <= 1 and chunks == sorted(chunks)
    assert all((e - b) % align == 0 for b, e in zip(begins[:-1], ends[:-1]) if e < n)
    if programs > -(-n // align):
        assert chunks[0] == 0
    # The hand-checked cases of the rule.
    if (n, programs, align) == (10, 3, 4):
        assert (begins, ends) == ([0, 4, 8], [4, 8, 10])
    if (n, programs, align) == (5, 8, 4):
        assert (begins, ends) == ([0] * 6 + [0, 4], [0] * 6 + [4, 5])
    with pytest.raises(ValueError, match="K >= 1"):
        _C._partition_slices(4, 0, 16)


def test_grid_size_from_sms_and_compiled_resources():
    """K <= SMs x resident blocks per SM (threads, registers, shared memory
    of the compiled kernel), at most one program per chunk of units."""
    assert S.resident_blocks_per_sm(4, 32, 6144) == 16     # threads: 2048 / 128
    assert S.resident_blocks_per_sm(4, 64, 6144) == 8      # registers: 65536 / (64 * 128)
    assert S.resident_blocks_per_sm(4, 128, 6144) == 4     # registers: 65536 / (128 * 128)
    assert S.resident_blocks_per_sm(8, 255, 0) == 1        # 255 -> 256 per thread
    assert S.resident_blocks_per_sm(4, 32, 100 * 1024) == 2  # shared: 228 KiB / (100 + 1) KiB
    assert S.grid_programs(8, S.H100_SMS, 4) == 8
    assert S.grid_programs(10_000, S.H100_SMS, 4) == 4 * S.H100_SMS
    assert S.grid_programs(0, S.H100_SMS, 0) == 1


def test_grid_refuses_many_programs_in_one_interpreted_launch(monkeypatch):
    monkeypatch.setattr(S, "GRID_PROGRAMS", 3)
    args = make_args("gru", 2, 2, 40, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="cannot run under the Triton interpreter"):
        run("gru", args, None, strategy="grid")


GRID_CASES = [("lstm", 0), ("lstm", 20), ("gru", 0), ("rnn_tanh", 0), ("rnn_relu", 0)]


@pytest.mark.parametrize("programs", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("kind,P", GRID_CASES, ids=[f"{k}-P{p}" for k, p in GRID_CASES])
def test_grid_with_k_programs_matches_reference(kind, P, programs, monkeypatch):
    """K programs each own partition::split's slice of the units (and of
    the projection's columns); one launch per step and phase stands in for
    the barrier under the interpreter.  H = 37 is not a multiple of the
    slice chunk (16 in fp64: 3 chunks, so K = 5 and 8 leave programs
    without units); buffers start as NaN, so an element no program wrote
    shows up; compared with the fp64 reference, outputs, workspace and
    every gradient."""
    monkeypatch.setattr(S, "GRID_PROGRAMS", programs)
    monkeypatch.setattr(S, "GRID_STEPWISE", True)
    monkeypatch.setattr(S, "POISON_BUFFERS", True)
    counter = LaunchCounter(getattr(S.K, f"{kind.split('_')[0]}_fwd_grid_kernel"))
    monkeypatch.setattr(S.K, f"{kind.split('_')[0]}_fwd_grid_kernel", counter)
    T = 3
    args = make_args(kind, T, 5, 37, P, True, torch.float64)
    check_against_reference(kind, args, [3, 1, 0, 2, 3], "grid", TOL[torch.float64])
    assert counter.launches >= T * (2 if P else 1)  # forward ran stepwise (and backward too)


def _count_launches(monkeypatch, host, *args, resident=None):
    """Kernel launches host(*args) makes; nothing runs (the count is the
    host code's), so the sizes can be large under the interpreter.
    resident: a dict to collect each kernel's RESIDENT flags in."""
    counts = {}

    class Stub:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*a, **k):
                counts[self.name] = counts.get(self.name, 0) + 1
                if resident is not None and "RESIDENT" in k:
                    resident.setdefault(self.name, set()).add(k["RESIDENT"])
            return launch
    for n in dir(S.K):
        if n.endswith("_kernel"):
            monkeypatch.setattr(S.K, n, Stub(n))
    host(*args)
    return counts


def _z(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("resident", [False, True], ids=["one-program", "program-per-tile"])
@pytest.mark.parametrize("cell,H,P", [("lstm", 256, 0), ("lstm", 256, 128), ("gru", 256, 0), ("rnn", 256, 0),
                                      ("lstm", 40, 0), ("gru", 100, 0), ("lstm", 128, 0), ("rnn", 512, 0)])
def test_launch_count_does_not_grow_with_the_sequence(cell, H, P, resident, monkeypatch):
    """The issue's done-when: at hidden sizes where the single-program
    kernel does not fit, a forward and a training step (forward and
    backward) launch as many kernels at T = 12 as at T = 4: one per layer
    direction each way under "auto" -- where the step loop launched T (2T).
    With one program per unit tile (as a GPU sizes the grid), the launches
    keep W_hh resident exactly where the rule says (fp32: up to 64 KiB of
    tiles per program, no projection) and are still one per direction;
    with one program (the interpreter's launches) nothing is resident past
    one unit tile."""
    n_gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    Kd = P or H
    assert not S.use_persistent(n_gates, H, Kd, P, torch.float32)
    B, f32 = 3, torch.float32
    L = torch.tensor([2, 4, 1])
    chunks = -(-max(H, P) // S._grid_tiles(f32)[1])
    if resident:
        monkeypatch.setattr(S, "GRID_PROGRAMS", chunks)
        # The stubs run nothing, so a launch of many programs is only counted.
        monkeypatch.setattr(S, "_interpreting", lambda: False)
    flags = {}

    def forward_and_backward(T, strategy):
        acc = S.acc_dtype(f32)
        if cell == "lstm":
            gx, w, b = _z(T, B, 4 * H), _z(4 * H, Kd), _z(4 * H)
            w_hr = _z(P, H) if P else None
            h0, c0 = _z(B, Kd), _z(B, H)
            fwd = _count_launches(monkeypatch, S.lstm_forward, gx, w, b, w_hr, h0, c0, L, strategy,
                                  resident=flags)
            bwd = _count_launches(monkeypatch, S.lstm_backward, _z(T, B, Kd), _z(B, Kd), _z(B, H), w, w_hr, h0,
                                  c0, _z(T, B, Kd), _z(T, B, 5 * H, dtype=acc), _z(T if P else 0, B, H), L,
                                  None, strategy, resident=flags)
        elif cell == "gru":
            gx, w, b, h0 = _z(T, B, 3 * H), _z(3 * H, H), _z(3 * H), _z(B, H)
            fwd = _count_launches(monkeypatch, S.gru_forward, gx, w, b, h0, L, strategy, resident=flags)
            bwd = _count_launches(monkeypatch, S.gru_backward, _z(T, B, H), _z(B, H), w, h0, _z(T, B, H),
                                  _z(T, B, 4 * H, dtype=acc), L, None, strategy, resident=flags)
        else:
            gx, w, b, h0 = _z(T, B, H), _z(H, H), _z(H), _z(B, H)
            fwd = _count_launches(monkeypatch, S.rnn_forward, gx, w, b, h0, L, False, strategy, resident=flags)
            bwd = _count_launches(monkeypatch, S.rnn_backward, _z(T, B, H), _z(B, H), w, h0, _z(T, B, H),
                                  _z(T, B, H, dtype=acc), L, None, False, strategy, resident=flags)
        return fwd, bwd

    short, long_ = forward_and_backward(4, "auto"), forward_and_backward(12, "auto")
    assert short == long_
    fwd, bwd = short
    kind = "rnn" if cell == "rnn" else cell
    assert fwd == {f"{kind}_fwd_grid_kernel": 1} and bwd == {f"{kind}_bwd_grid_kernel": 1}
    for way, backward in (("fwd", False), ("bwd", True)):
        want = resident and S.why_not_resident(n_gates, H, Kd, P, f32, chunks, backward) is None
        assert flags[f"{kind}_{way}_grid_kernel"] == {want}, (way, flags)
    # Within the fp32 budget (and without a projection) the tiles are resident.
    if resident and not P and (cell, H) in (("lstm", 40), ("gru", 100), ("lstm", 128), ("rnn", 256), ("rnn", 512)):
        assert flags == {f"{kind}_fwd_grid_kernel": {True}, f"{kind}_bwd_grid_kernel": {True}}
    # The counter sees the step loop grow with T.
    step_short, step_long = forward_and_backward(4, "step"), forward_and_backward(12, "step")
    assert sum(step_long[0].values()) > sum(step_short[0].values()) >= 4


# ------------------------------------------------ grid: resident weights ----
class KwargsRecorder:
    """Wraps a kernel to record the keyword arguments of its launches."""

    def __init__(self, kernel):
        self.kernel, self.kwargs = kernel, []

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def recorded(*args, **kwargs):
            self.kwargs.append(kwargs)
            return launch(*args, **kwargs)
        return recorded


def _record_grid_kernels(monkeypatch, kind):
    cell = kind.split("_")[0]
    recorders = {}
    for way in ("fwd", "bwd"):
        name = f"{cell}_{way}_grid_kernel"
        recorders[way] = KwargsRecorder(getattr(S.K, name))
        monkeypatch.setattr(S.K, name, recorders[way])
    return recorders


# (kind, T, B, H, dtype, lengths, programs, bias): one program (H within one unit
# tile: one launch of the whole sequence, as the interpreter runs it) or
# cdiv(H, BLOCK_N) programs (one launch per step); B = 18 spans two batch
# tiles; H not a multiple of the tile; lengths with empty rows.
RESIDENT_CASES = [
    ("lstm", 4, 3, 20, torch.float32, [4, 1, 0], 1, True),
    ("lstm", 3, 18, 32, torch.float32, None, 1, False),
    ("lstm", 3, 5, 33, torch.float32, [3, 1, 0, 2, 3], 2, True),
    ("lstm", 3, 5, 37, torch.float64, [3, 1, 0, 2, 3], 3, True),
    ("lstm", 3, 5, 70, torch.float32, [2, 3, 1, 0, 3], 3, False),
    ("lstm", 5, 2, 16, torch.float64, [5, 0], 1, True),
    ("gru", 4, 3, 20, torch.float32, [4, 1, 0], 1, True),
    ("gru", 3, 18, 32, torch.float32, [3, 1, 0, 2, 3, 3] * 3, 1, True),
    ("gru", 3, 5, 37, torch.float64, None, 3, False),
    ("gru", 3, 5, 48, torch.float32, [1, 3, 0, 2, 3], 2, True),
    ("gru", 3, 5, 70, torch.float32, [2, 3, 1, 0, 3], 3, True),
    ("rnn_tanh", 4, 3, 20, torch.float32, [4, 1, 0], 1, True),
    ("rnn_tanh", 3, 18, 32, torch.float32, None, 1, False),
    ("rnn_tanh", 3, 5, 37, torch.float64, [3, 1, 0, 2, 3], 3, True),
    ("rnn_tanh", 3, 5, 64, torch.float32, [3, 3, 0, 1, 2], 2, True),
    ("rnn_relu", 4, 3, 20, torch.float32, None, 1, False),
    ("rnn_relu", 3, 5, 70, torch.float32, [2, 3, 1, 0, 3], 3, True),
    ("rnn_relu", 3, 18, 16, torch.float64, [3, 1, 0, 2, 3, 3] * 3, 1, True),
]


def _resident_id(case):
    kind, T, B, H, dtype, lengths, programs, bias = case
    return (f"{kind}-T{T}-B{B}-H{H}-{str(dtype)[-7:]}-{'len' if lengths else 'full'}-K{programs}-"
            f"{'bias' if bias else 'nobias'}")


@pytest.mark.parametrize("case", RESIDENT_CASES, ids=[_resident_id(c) for c in RESIDENT_CASES])
def test_grid_resident_matches_reference(case, monkeypatch):
    """The grid kernels with W_hh kept resident (one tl.dot per step against
    the tile each program loaded before the time loop): outputs, workspace
    and every gradient (h0 and c0 included) against the fp64 reference,
    buffers poisoned with NaN.  fp32 runs under the rule; fp64 (not a speed
    dtype, so the rule declines it) is forced by GRID_RESIDENT for a tight
    comparison.  The launches are checked to be the resident ones."""
    kind, T, B, H, dtype, lengths, programs, bias = case
    monkeypatch.setattr(S, "POISON_BUFFERS", True)
    monkeypatch.setattr(S, "GRID_RESIDENT", True if dtype == torch.float64 else None)
    if programs > 1:
        monkeypatch.setattr(S, "GRID_PROGRAMS", programs)
        monkeypatch.setattr(S, "GRID_STEPWISE", True)
    assert programs == -(-H // S._grid_tiles(dtype)[1])
    recorders = _record_grid_kernels(monkeypatch, kind)
    args = make_args(kind, T, B, H, 0, bias, dtype)
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    check_against_reference(kind, args, lengths, "grid", tol)
    n_gates = {"lstm": 4, "gru": 3}.get(kind, 1)
    for way, rec in recorders.items():
        assert rec.kwargs, way
        for kw in rec.kwargs:
            assert kw["RESIDENT"] is True, way
            want = S.resident_tile_shape(n_gates, H, H, dtype, way == "bwd")[1]
            assert kw["BLOCK_R"] == want >= H


def test_grid_resident_rule(monkeypatch):
    """why_not_resident: W_hh stays resident only when every program owns
    exactly one unit tile, the tiles fit the dtype's budget (fp32 64 KiB,
    fp16/bf16 32 KiB per program, 16 KiB with H not a multiple of 16), not
    for fp64 nor with a projection, and not when the compiled kernel spills; GRID_RESIDENT forces it on (where
    the kernel can: one tile per program, no projection) or off.  Under the
    interpreter a launch has one program, so the rule keeps the weights of
    H <= BLOCK_N resident there and streams them past it."""
    f32, f16, bf16, f64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
    w = S.why_not_resident
    assert S._grid_tiles(f32)[1] == S._grid_tiles(f16)[1] == 32
    # One unit tile per program: 4 programs for H = 128 (BLOCK_N = 32).
    assert w(4, 128, 128, 0, f32, 4) is None and w(4, 128, 128, 0, f32, 4, backward=True) is None
    assert "3 programs for 4 unit tiles" in w(4, 128, 128, 0, f32, 3)
    assert "5 programs for 4 unit tiles" in w(4, 128, 128, 0, f32, 5)
    # Budgets: LSTM 4 x [pad(H), 32] each way.
    assert S.resident_bytes(4, 128, 128, f32, False) == 64 * 1024 == S.resident_bytes(4, 128, 128, f32, True)
    assert "128 KiB, over the 64 KiB budget of float32" in w(4, 256, 256, 0, f32, 8)
    assert "over the 64 KiB budget" in w(4, 129, 129, 0, f32, 5, backward=True)
    assert w(4, 128, 128, 0, f16, 4) is None and w(4, 128, 128, 0, bf16, 4, backward=True) is None
    assert "over the 32 KiB budget of float16" in w(4, 256, 256, 0, f16, 8, backward=True)
    # GRU: three [pad(H), 32] tiles each way bound H at 128; RNN's one at 512.
    assert w(3, 128, 128, 0, f32, 4, backward=True) is None and w(3, 128, 128, 0, f32, 4) is None
    assert w(3, 129, 129, 0, f32, 5, backward=True) is not None and w(3, 129, 129, 0, f16, 5) is not None
    assert w(1, 512, 512, 0, f32, 16) is None and w(1, 513, 513, 0, bf16, 17) is not None
    # H not a multiple of 16: fp16/bf16 at half the budget (their backward
    # spills at 32 KiB there), fp32 at the same.
    assert "over the 16 KiB budget of float16 with H not a multiple of 16" in w(4, 127, 127, 0, f16, 4)
    assert w(4, 63, 63, 0, f16, 2, backward=True) is None and w(4, 127, 127, 0, f32, 4) is None
    assert w(4, 112, 112, 0, bf16, 4) is None and w(4, 111, 111, 0, bf16, 4) is not None
    # Not for fp64, nor with a projection; not when the kernel spills.
    assert "float64" in w(4, 32, 32, 0, f64, 2)
    assert "projection" in w(4, 64, 32, 32, f32, 2)
    # The compiled kernel: a stack frame of at most 16 bytes below the
    # register cap is not spill; more, or any at 255 registers, is.
    assert w(4, 64, 64, 0, f32, 2, spill_bytes=S.GRID_STACK_BYTES, registers=80) is None
    assert "spills (24 bytes of local memory per thread at 80 registers)" in w(4, 64, 64, 0, f32, 2,
                                                                               spill_bytes=24, registers=80)
    assert "spills (16 bytes" in w(4, 128, 128, 0, f16, 4, backward=True, spill_bytes=16, registers=255)
    # The test switch.
    monkeypatch.setattr(S, "GRID_RESIDENT", True)
    assert w(4, 32, 32, 0, f64, 2) is None and w(4, 1024, 1024, 0, f32, 32, spill_bytes=999) is None
    assert "projection" in w(4, 64, 32, 32, f32, 2) and "unit tiles" in w(4, 128, 128, 0, f32, 1)
    monkeypatch.setattr(S, "GRID_RESIDENT", False)
    assert "GRID_RESIDENT" in w(4, 128, 128, 0, f32, 4)
    monkeypatch.setattr(S, "GRID_RESIDENT", None)

    # What the launches do under the interpreter (one program each).
    def resident_flags(kind, H, dtype, P=0):
        recorders = _record_grid_kernels(monkeypatch, kind)
        args = make_args(kind, 2, 3, H, P, True, dtype)
        outs = run(kind, args, None, "grid")
        grads(outs, args)
        flags = {way: {kw["RESIDENT"] for kw in rec.kwargs} for way, rec in recorders.items()}
        monkeypatch.undo()
        return flags
    assert resident_flags("gru", 32, f32) == {"fwd": {True}, "bwd": {True}}
    assert resident_flags("gru", 33, f32) == {"fwd": {False}, "bwd": {False}}
    assert resident_flags("rnn_tanh", 9, f16) == {"fwd": {True}, "bwd": {True}}
    assert resident_flags("lstm", 16, f64) == {"fwd": {False}, "bwd": {False}}
    assert resident_flags("lstm", 12, f32, P=8) == {"fwd": {False}, "bwd": {False}}


# -------------------------------------------------- parity with reference ----
# (kind, T, B, H, P, bias, lengths): small H (persistent under "auto") and
# H > 32 (step under "auto"); B > 16 spans several batch tiles.
CASES = [
    ("lstm", 5, 3, 6, 0, True, [5, 2, 0]),
    ("lstm", 4, 3, 6, 3, True, None),
    ("lstm", 3, 18, 40, 0, False, [3, 1, 0, 2, 3, 3] * 3),
    ("lstm", 3, 5, 36, 20, True, [2, 3, 0, 1, 3]),
    ("gru", 5, 3, 6, 0, True, [1, 5, 0]),
    ("gru", 4, 3, 7, 0, False, None),
    ("gru", 3, 18, 40, 0, True, [3, 1, 0, 2, 3, 3] * 3),
    ("rnn_tanh", 5, 3, 6, 0, True, [1, 5, 0]),
    ("rnn_relu", 4, 3, 7, 0, False, None),
    ("rnn_relu", 3, 18, 40, 0, True, [3, 1, 0, 2, 3, 3] * 3),
]


def _case_id(case):
    kind, T, B, H, P, bias, lengths = case
    return f"{kind}-T{T}-B{B}-H{H}-P{P}-{'bias' if bias else 'nobias'}-{'len' if lengths else 'full'}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_reference(case, strategy, dtype):
    kind, T, B, H, P, bias, lengths = case
    args = make_args(kind, T, B, H, P, bias, dtype)
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    check_against_reference(kind, args, lengths, strategy, tol)


# (kind, T, B, input_size, H, P, lengths); pack_padded_sequence wants
# lengths >= 1.
NN_CASES = [
    ("lstm", 4, 3, 5, 8, 0, [4, 1, 3]),
    ("lstm", 3, 4, 6, 40, 0, [3, 1, 2, 1]),
    ("lstm", 3, 3, 4, 36, 20, [2, 3, 1]),
    ("gru", 4, 3, 5, 8, 0, None),
    ("gru", 3, 4, 6, 40, 0, [1, 3, 2, 1]),
    ("rnn_tanh", 4, 3, 5, 8, 0, [4, 1, 3]),
    ("rnn_relu", 3, 4, 6, 40, 0, None),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", NN_CASES, ids=lambda c: f"{c[0]}-H{c[4]}-P{c[5]}-{'len' if c[6] else 'full'}")
def test_matches_torch_nn(case, strategy, dtype, monkeypatch):
    kind, T, B, I, H, P, lengths = case
    monkeypatch.setenv(S.STRATEGY_ENV, strategy)
    module = make_module(kind, I, H, P, True, dtype, DEVICE)
    x, h0, c0 = make_inputs(kind, module, T, B, dtype, DEVICE)
    L = torch.tensor(lengths) if lengths else None
    wrt = [x, h0] + ([c0] if c0 is not None else []) + list(module.parameters())
    want_out, want_grads = outputs_and_grads(run_torch(kind, module, x, h0, c0, L), wrt)
    got_out, got_grads = outputs_and_grads(run_ops(kind, module, x, h0, c0, L, "triton"), wrt)
    assert_all_close(got_out, want_out, dtype, ["output", "h_n", "c_n"])
    assert_all_close(got_grads, want_grads, dtype)


@pytest.mark.skipif(HAS_CUDA, reason="interpreter test (fp16 on the GPU: test_cuda_low_precision)")
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_fp16_under_the_interpreter(kind, strategy):
    """fp16 storage, fp32 gates and cell state: no further from an fp64
    reference than the fp16 reference itself (x2, plus a floor)."""
    lengths = [4, 0, 2]
    args64 = make_args(kind, 4, 3, 8, 0, True, torch.float64)
    args16 = {k: (v.detach().half().requires_grad_() if v is not None else None) for k, v in args64.items()}
    want = run(kind, args64, lengths)
    want_g = grads(want, args64)
    for who in ("reference", strategy):
        got = run(kind, args16, lengths, who)
        assert got[-1].dtype == torch.float32  # workspace in fp32
        errs = [(g.double() - w).abs().max().item() for g, w in zip(got, want)]
        errs += [(g.double() - w).abs().max().item() for g, w in zip(grads(got, args16), want_g)]
        if who == "reference":
            ref_errs = errs
    for e, r in zip(errs, ref_errs):
        assert e <= 2 * r + 1e-3, (errs, ref_errs)


# ------------------------------------------------------- poisoned buffers ----
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind,P", [("lstm", 0), ("lstm", 3), ("gru", 0), ("rnn_tanh", 0), ("rnn_relu", 0)])
def test_every_buffer_element_is_written(kind, P, strategy, monkeypatch):
    """Buffers start as NaN: an element a kernel forgets (a padded row, a
    row past its length, a length-0 row's final state) shows up."""
    monkeypatch.setattr(S, "POISON_BUFFERS", True)
    assert torch.isnan(S._buffer((2,), torch.zeros(1))).all()  # the hook is live
    lengths = [4, 2, 0, 1, 4]
    args = make_args(kind, 4, 5, 6, P, True, torch.float64)
    got = run(kind, args, lengths, strategy)
    got_g = grads(got, args)
    for t in list(got) + got_g:
        assert not torch.isnan(t).any()
    want = run(kind, args, lengths)
    for g, w in zip(list(got) + got_g, list(want) + grads(want, args)):
        torch.testing.assert_close(g, w, **TOL[torch.float64])


# ---------------------------------------------------------------- opcheck ----
def _t(*shape, grad):
    return torch.randn(*shape, dtype=torch.float64, device=DEVICE, requires_grad=grad)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("proj,lengths", [(False, None), (True, [3, 0])], ids=["noproj-full", "proj-lengths"])
def test_opcheck_lstm(proj, lengths, strategy):
    T, B, H, P = 3, 2, 4, 3
    hout = P if proj else H
    L = torch.tensor(lengths) if lengths else None
    for grad in (False, True):
        fwd = (_t(T, B, 4 * H, grad=grad), _t(4 * H, hout, grad=grad), _t(4 * H, grad=grad),
               _t(P, H, grad=grad) if proj else None, _t(B, hout, grad=grad), _t(B, H, grad=grad), L, strategy)
        torch.library.opcheck(torch.ops.rnn_ext.triton_lstm_forward, fwd)
    with torch.no_grad():
        y, hn, cn, ws, pin = torch.ops.rnn_ext.triton_lstm_forward(*fwd)
    bwd = (torch.randn_like(y), torch.randn_like(hn), torch.randn_like(cn), fwd[1].detach(),
           fwd[3].detach() if proj else None, fwd[4].detach(), fwd[5].detach(), y, ws, pin, L,
           torch.randn_like(ws), strategy)
    torch.library.opcheck(torch.ops.rnn_ext.triton_lstm_backward, bwd)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("lengths", [None, [0, 3]], ids=["full", "lengths"])
def test_opcheck_gru(lengths, strategy):
    T, B, H = 3, 2, 4
    L = torch.tensor(lengths) if lengths else None
    for grad in (False, True):
        fwd = (_t(T, B, 3 * H, grad=grad), _t(3 * H, H, grad=grad), _t(3 * H, grad=grad),
               _t(B, H, grad=grad), L, strategy)
        torch.library.opcheck(torch.ops.rnn_ext.triton_gru_forward, fwd)
    with torch.no_grad():
        y, hn, ws = torch.ops.rnn_ext.triton_gru_forward(*fwd)
    bwd = (torch.randn_like(y), torch.randn_like(hn), fwd[1].detach(), fwd[3].detach(), y, ws, L,
           torch.randn_like(ws), strategy)
    torch.library.opcheck(torch.ops.rnn_ext.triton_gru_backward, bwd)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("nonlinearity,lengths", [("tanh", None), ("relu", [0, 3])], ids=["tanh-full", "relu-lengths"])
def test_opcheck_rnn(nonlinearity, lengths, strategy):
    T, B, H = 3, 2, 4
    L = torch.tensor(lengths) if lengths else None
    for grad in (False, True):
        fwd = (_t(T, B, H, grad=grad), _t(H, H, grad=grad), _t(H, grad=grad), _t(B, H, grad=grad), L,
               nonlinearity, strategy)
        torch.library.opcheck(torch.ops.rnn_ext.triton_rnn_forward, fwd)
    with torch.no_grad():
        y, hn, ws = torch.ops.rnn_ext.triton_rnn_forward(*fwd)
    bwd = (torch.randn_like(y), torch.randn_like(hn), fwd[1].detach(), fwd[3].detach(), y, ws, L,
           torch.randn_like(ws), nonlinearity, strategy)
    torch.library.opcheck(torch.ops.rnn_ext.triton_rnn_backward, bwd)


# ---------------------------------------------------------- torch.compile ----
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_torch_compile_fullgraph(kind):
    torch._dynamo.reset()
    args = make_args(kind, 3, 3, 5, 0, True, torch.float32)
    L = torch.tensor([3, 1, 0])
    wrt = [v for v in args.values() if v is not None]

    def f(*a):
        if kind == "lstm":
            y, hn, cn, ws = functional.lstm(a[0], a[1], a[2], None, a[3], a[4], lengths=L, backend="triton")
            return (y * y).sum() + hn.sum() + cn.sum() + ws.sum()
        if kind == "rnn_relu":
            y, hn, ws = functional.rnn(*a, lengths=L, nonlinearity="relu", backend="triton")
            return (y * y).sum() + hn.sum() + ws.sum()
        y, hn, ws = functional.gru(*a, lengths=L, backend="triton")
        return (y * y).sum() + hn.sum() + ws.sum()

    backend = "inductor" if HAS_CUDA else "aot_eager"
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    got = compiled(*wrt)
    got_g = torch.autograd.grad(got, wrt)
    want = f(*wrt)
    want_g = torch.autograd.grad(want, wrt)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_g, want_g):
        torch.testing.assert_close(g, w)


# ---------------------------------------------------------------- why_not ----
@pytest.mark.skipif(HAS_CUDA, reason="the interpreter is off where there is a GPU")
def test_why_not_under_the_interpreter(monkeypatch):
    cpu = torch.device("cpu")
    for dtype in (torch.float32, torch.float64, torch.float16):
        assert rnn_triton.why_not(cpu, dtype) is None
    assert "bfloat16" in rnn_triton.why_not(cpu, torch.bfloat16)
    assert "dtype torch.int64" in rnn_triton.why_not(cpu, torch.int64)
    assert "CUDA" in rnn_triton.why_not(torch.device("meta"), torch.float32)
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run.*bfloat16"):
        functional.lstm(**{k: v.bfloat16() if isinstance(v, torch.Tensor) else v
                           for k, v in lstm_args().items()}, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in rnn_triton.why_not(cpu, torch.float32)
    assert rnn_ext.backends.resolve("auto", cpu, torch.float32) == "cpu"


def test_tf32_switch_sets_dot_precision():
    with tf32(True):
        assert S._precision(torch.float32) == "tf32"
        assert S._precision(torch.float64) == "ieee"
        assert S._precision(torch.float16) == "ieee"
    with tf32(False):
        assert S._precision(torch.float32) == "ieee"


# -------------------------------------------------------------- bad input ----
def _on_device(d):
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v)
            for k, v in d.items()}


@pytest.mark.parametrize("over,match", LSTM_BAD, ids=[m + str(i) for i, (_, m) in enumerate(LSTM_BAD)])
def test_lstm_bad_input(over, match):
    args = _on_device(lstm_args(**over))
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        functional.lstm(**args, backend="triton")


@pytest.mark.parametrize("over,match", GRU_BAD, ids=[m + str(i) for i, (_, m) in enumerate(GRU_BAD)])
def test_gru_bad_input(over, match):
    args = _on_device(gru_args(**over))
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        functional.gru(**args, backend="triton")


@pytest.mark.parametrize("over,match", RNN_BAD, ids=[m + str(i) for i, (_, m) in enumerate(RNN_BAD)])
def test_rnn_bad_input(over, match):
    args = _on_device(rnn_args(**over))
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        functional.rnn(**args, backend="triton")


def test_op_level_checks():
    a = _on_device(lstm_args())
    g, w, b, h0, c0 = a["input_gates"], a["w_hh"], a["b_hh"], a["h0"], a["c0"]
    op = torch.ops.rnn_ext.triton_lstm_forward
    with pytest.raises(RuntimeError, match="triton_lstm_forward: lengths must be int64"):
        op(g, w, b, None, h0, c0, torch.tensor([1, 2], dtype=torch.int32), "auto")
    with pytest.raises(RuntimeError, match="lengths must be a CPU tensor"):
        op(g, w, b, None, h0, c0, torch.tensor([1, 2], device="meta"), "auto")
    with pytest.raises(RuntimeError, match="strategy must be one of"):
        op(g, w, b, None, h0, c0, None, "fastest")
    with pytest.raises(RuntimeError, match="h0 is on meta but input_gates is on"):
        op(g, w, b, None, h0.to("meta"), c0, None, "auto")
    y, hn, cn, ws, pin = op(g, w, b, None, h0, c0, None, "auto")
    bwd = torch.ops.rnn_ext.triton_lstm_backward
    with pytest.raises(RuntimeError, match="expected grad_output of shape"):
        bwd(y[:, :, :-1], hn, cn, w, None, h0, c0, y, ws, pin, None, None, "auto")
    with pytest.raises(RuntimeError, match="grad_workspace must match workspace"):
        bwd(y, hn, cn, w, None, h0, c0, y, ws, pin, None, ws[:, :, 1:], "auto")
    gb = _on_device(gru_args())
    with pytest.raises(RuntimeError, match="expected w_hh of shape"):
        torch.ops.rnn_ext.triton_gru_forward(gb["input_gates"], gb["w_hh"][:, :-1], gb["b_hh"], gb["h0"],
                                             None, "auto")
    rb = _on_device(rnn_args())
    rnn_op = torch.ops.rnn_ext.triton_rnn_forward
    with pytest.raises(RuntimeError, match="triton_rnn_forward: unknown nonlinearity 'gelu'"):
        rnn_op(rb["input_gates"], rb["w_hh"], rb["b_hh"], rb["h0"], None, "gelu", "auto")
    y, hn, ws = rnn_op(rb["input_gates"], rb["w_hh"], rb["b_hh"], rb["h0"], None, "tanh", "auto")
    with pytest.raises(RuntimeError, match="workspace does not match output"):
        torch.ops.rnn_ext.triton_rnn_backward(y, hn, rb["w_hh"], rb["h0"], y, ws[:, :, 1:], None, None,
                                              "tanh", "auto")


# ------------------------------------------------ GPU compile (no GPU) ----
# Session scope: a module fixture is made again when an xdist worker comes
# back to this module after another (the compile takes minutes).
@pytest.fixture(scope="session")
def sm90():
    """What tests/_triton_sm90.py compiles for an H100: one record per kernel
    launch of its grid (shared memory, registers, spill, the specialisation)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # The rnn_ext of this checkout, not whichever one is installed.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    helper = os.path.join(os.path.dirname(__file__), "_triton_sm90.py")
    proc = subprocess.run([sys.executable, helper, "--workers", "2"], capture_output=True, text=True, env=env,
                          timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# What cuobjdump reports as the stack of a few fp32 grid kernels at 64-128
# registers (so not register pressure): at most 16 bytes; every other grid
# kernel has none.  The resident rule allows the same on a GPU.
GRID_STACK_BYTES = S.GRID_STACK_BYTES
assert GRID_STACK_BYTES == 16


def _fits(r):
    return r["shared_bytes"] <= S._fit.SM90_SHARED_LIMIT and r["spill_bytes"] == 0


@pytest.mark.xdist_group("sm90")
def test_kernels_compile_for_sm90(sm90):
    """Every kernel, every dtype (bf16 included, which the interpreter cannot
    run), as the launcher launches it, compiles for an H100; the step
    kernels hardly spill (fp64, not a speed dtype, is only required to compile)."""
    assert {r["kernel"] for r in sm90} == {n for n in dir(S.K) if n.endswith("_kernel")}
    assert {r["dtype"] for r in sm90} == {"fp32", "fp16", "bf16", "fp64"}
    errors = [r for r in sm90 if r["error"]]
    assert not errors, errors[0]
    for r in sm90:
        if r["strategy"] == "step" and r["dtype"] != "fp64":
            assert r["spill_bytes"] <= 128, r
        if r["strategy"] == "persistent-bounded":  # RNN at the size its bound admits: fits, no spill
            assert _fits(r), r
        if r["strategy"] == "grid":  # every grid configuration "auto" or a name can launch
            assert r["shared_bytes"] <= S._fit.SM90_SHARED_LIMIT and r["spill_bytes"] <= GRID_STACK_BYTES, r
            assert r["constexprs"]["RESIDENT"] is False, r  # one program per launch here: streamed
    assert {r["kernel"] for r in sm90 if r["strategy"] == "grid"} == {n for n in dir(S.K) if n.endswith("_grid_kernel")}


@pytest.mark.xdist_group("sm90")
def test_sm90_resident_grid_kernels_fit(sm90):
    """The grid kernels with W_hh resident, at the largest H the rule admits
    (the tiles at RESIDENT_BUDGET) and one program per unit tile, as a
    launch compiles them for an H100: every grid kernel, fp32, fp16 and
    bf16, H a multiple of 16 and not, within sm_90's shared memory and
    without spill as the rule judges it on a GPU (spills_registers: no more
    than the streamed grid kernels' small stack, none at the register cap),
    so the budget admits nothing that spills; the tiles are staged in shared
    memory (the compiled kernel's shared memory covers them)."""
    resident = [r for r in sm90 if r["strategy"] == "grid-resident"]
    assert {r["kernel"] for r in resident} == {n for n in dir(S.K) if n.endswith("_grid_kernel")}
    assert {r["dtype"] for r in resident} == {"fp32", "fp16", "bf16"}
    assert any(r["H"] % 16 for r in resident) and any(r["H"] % 16 == 0 for r in resident)
    for r in resident:
        cx = r["constexprs"]
        assert cx["RESIDENT"] is True and r["programs"] == -(-r["H"] // cx["BLOCK_N"]), r
        assert r["shared_bytes"] <= S._fit.SM90_SHARED_LIMIT and r["spill_bytes"] <= GRID_STACK_BYTES, r
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[r["dtype"]]
        n_gates = {"lstm": 4, "gru": 3}.get(r["family"], 1)
        backward = "_bwd_" in r["kernel"]
        tiles, rows, cols = S.resident_tile_shape(n_gates, r["H"], r["H"], dtype, backward)
        assert cx["BLOCK_R"] == rows and cols == cx["BLOCK_N"]
        assert r["shared_bytes"] >= S.resident_bytes(n_gates, r["H"], r["H"], dtype, backward), r
        # At the budget: the rule admits it, compiled as it is (no spill), and
        # the next tile size (of the same alignment) would be refused.
        assert S.why_not_resident(n_gates, r["H"], r["H"], 0, dtype, r["programs"], backward,
                                  r["spill_bytes"], r["registers"]) is None, r
        bigger = 2 * S._pad(r["H"]) - (0 if r["H"] % 16 == 0 else 1)
        assert S.why_not_resident(n_gates, bigger, bigger, 0, dtype, -(-bigger // cols), backward) is not None, r


@pytest.mark.xdist_group("sm90")
def test_sm90_compiles_what_a_launch_compiles(sm90):
    """The launch binder's specialisation: an H that is a multiple of 16 is
    specialised (divisibility 16), one that is not is not; pointers are
    16-byte aligned; the tiles are the launcher's constexprs."""
    persistent = [r for r in sm90 if r["strategy"] == "persistent" and r["kernel"] == "lstm_fwd_persistent_kernel"]
    by_h = {r["H"]: r for r in persistent if r["family"] == "lstm" and r["dtype"] == "fp16"}
    assert any(h % 16 == 0 for h in by_h) and any(h % 16 for h in by_h)
    for h, r in by_h.items():
        assert ("H" in r["specialised"]) == (h % 16 == 0), r
        assert "gx_ptr" in r["specialised"]
        assert r["constexprs"]["BLOCK_H"] == S._pad(h) and r["constexprs"]["BLOCK_B"] == S.PERSISTENT_BLOCK_B
        assert r["num_warps"] == S.PERSISTENT_NUM_WARPS
    assert all(r["shared_bytes"] > 0 for r in persistent)


@pytest.mark.xdist_group("sm90")
def test_crossover_admits_exactly_the_persistent_kernels_that_fit_sm90(sm90):
    """Every persistent kernel "auto" admits fits an H100 block (shared memory
    <= 227 KiB, no spill); the next size up does not (so the crossover is
    the largest that fits); and the table the crossover reads
    (persistent_sm90.json) agrees with these fresh compiles."""
    persistent = [r for r in sm90 if r["strategy"] == "persistent"]
    assert {r["family"] for r in persistent} == set(S._fit.FAMILIES)
    assert any(r["admitted"] for r in persistent) and any(not r["admitted"] for r in persistent)
    launches = {}
    for r in persistent:
        launches.setdefault((r["family"], r["dtype"], r["precision"], r["H"], r["P"]), []).append(r)
    for key, rs in launches.items():
        assert len({r["admitted"] for r in rs}) == 1
        fits = all(_fits(r) for r in rs)
        assert rs[0]["admitted"] == fits, (key, [(r["kernel"], r["shared_bytes"], r["spill_bytes"]) for r in rs])
    table = S._fit.table()
    for r in persistent:
        if r.get("lengths", True) is not False:  # the table's flags and T, B
            entries = table.get((r["family"], r["dtype"], r["precision"], r["block_h"], r["block_k"],
                                 r["aligned"]), [])
            mine = [e for e in entries if e["kernel"] == r["kernel"]]
            if r["shared_bytes"] > S._fit.SM90_SHARED_LIMIT and not mine:
                continue  # past the end of the table: does not fit either way
            assert mine and mine[0]["shared_bytes"] == r["shared_bytes"], (r, mine)
            assert mine[0]["spill_bytes"] == r["spill_bytes"], (r, mine)


# ------------------------------------------------------------------- GPU ----
# (kind, T, B, H, P, lengths): both sides of the crossover, several batch
# and hidden tiles.
CUDA_CASES = [
    ("lstm", 20, 70, 32, 0, None),
    ("lstm", 12, 37, 33, 0, "random"),
    ("lstm", 10, 24, 96, 48, "random"),
    ("lstm", 10, 40, 130, 0, None),
    ("gru", 20, 70, 32, 0, "random"),
    ("gru", 12, 37, 64, 0, None),
    ("gru", 10, 24, 130, 0, "random"),
    ("rnn_tanh", 20, 70, 64, 0, "random"),
    ("rnn_relu", 10, 24, 130, 0, None),
]


def _cuda_lengths(spec, T, B, low=0):
    if spec is None:
        return None
    gen = torch.Generator().manual_seed(T * 1000 + B)
    lengths = torch.randint(low, T + 1, (B,), generator=gen)
    lengths[0] = T
    return lengths.tolist()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", CUDA_CASES, ids=lambda c: f"{c[0]}-T{c[1]}-B{c[2]}-H{c[3]}-P{c[4]}")
def test_cuda_matches_reference(case, strategy, dtype):
    kind, T, B, H, P, lengths = case
    args = make_args(kind, T, B, H, P, True, dtype, "cuda")
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=2e-4, atol=5e-5)
    n_gates = 4 if kind == "lstm" else 3
    if strategy == "persistent" and S.why_not_persistent(n_gates, H, P or H, P, dtype, "cuda", allow_spill=True):
        # Its kernels need more shared memory than a block has: refused by name.
        with pytest.raises(RuntimeError, match="strategy 'persistent' cannot run"):
            run(kind, args, _cuda_lengths(lengths, T, B), strategy)
        return
    check_against_reference(kind, args, _cuda_lengths(lengths, T, B), strategy, tol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", [("lstm", 16, 40, 11, 32, 0), ("lstm", 12, 33, 17, 96, 0),
                                  ("lstm", 12, 33, 17, 64, 24), ("gru", 16, 40, 11, 32, 0),
                                  ("gru", 12, 33, 17, 96, 0), ("rnn_tanh", 16, 40, 11, 32, 0),
                                  ("rnn_tanh", 12, 33, 17, 160, 0)],
                         ids=lambda c: f"{c[0]}-H{c[4]}-P{c[5]}")
def test_cuda_low_precision(case, strategy, dtype, monkeypatch):
    """Error against an fp64 reference (torch.nn in fp64) at most twice
    cuDNN's own error at this dtype, plus 1e-3: outputs and every gradient."""
    kind, T, B, I, H, P = case
    monkeypatch.setenv(S.STRATEGY_ENV, strategy)
    lengths = torch.tensor(_cuda_lengths("random", T, B, low=1))  # torch.nn: >= 1
    m64 = make_module(kind, I, H, P, True, torch.float64, "cuda")
    x64, h064, c064 = make_inputs(kind, m64, T, B, torch.float64, "cuda")
    m_lp = make_module(kind, I, H, P, True, dtype, "cuda")
    m_lp.load_state_dict({k: v.to(dtype) for k, v in m64.state_dict().items()})
    lp = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in (x64, h064, c064)]

    def wrt(m, x, h0, c0):
        return [x, h0] + ([c0] if c0 is not None else []) + list(m.parameters())

    def result(fn, m, x, h0, c0):
        outs, gs = outputs_and_grads(fn(kind, m, x, h0, c0, lengths), wrt(m, x, h0, c0))
        return [t.double() for t in outs + gs]

    want = result(run_torch, m64, x64, h064, c064)
    cudnn = result(run_torch, m_lp, *lp)
    for t in wrt(m_lp, *lp):
        t.grad = None
    ours = result(lambda *a: run_ops(*a, backend="triton"), m_lp, *lp)
    for k, (w, c, o) in enumerate(zip(want, cudnn, ours)):
        err_cudnn = (c - w).abs().max().item()
        err_ours = (o - w).abs().max().item()
        assert err_ours <= 2 * err_cudnn + 1e-3, (k, err_ours, err_cudnn)


@pytest.mark.cuda
def test_cuda_tf32_follows_the_matmul_switch():
    """With TF32 allowed the fp32 product is visibly less exact than with it
    off (which matches the fp32 reference tightly)."""
    args = make_args("lstm", 8, 64, 64, 0, True, torch.float32, "cuda")
    want = run("lstm", {k: (v.double() if v is not None else None) for k, v in args.items()}, None)
    errs = {}
    for allow in (False, True):
        with tf32(allow):
            got = run("lstm", args, None, "step")
        errs[allow] = (got[0].double() - want[0]).abs().max().item()
    assert errs[False] < 1e-5 and errs[True] > errs[False]


def test_direct_api_defaults_and_rank_check():
    """rnn_ext.triton.lstm/gru fill zero initial states; a wrong rank is
    reported before any shape is used."""
    args = make_args("lstm", 3, 2, 4, 0, True, torch.float64)
    g, w, b = args["input_gates"], args["w_hh"], args["b_hh"]
    got = rnn_triton.lstm(g, w, b, lengths=[3, 1])
    zeros = torch.zeros(2, 4, dtype=torch.float64, device=DEVICE)
    want = reference.lstm_reference(g, w, b, None, zeros, zeros, torch.tensor([3, 1]))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)
    with pytest.raises(RuntimeError, match="input_gates must be 3-D"):
        rnn_triton.lstm(g[0], w, b)
    with pytest.raises(RuntimeError, match="input_gates must be 3-D"):
        rnn_triton.gru(g[0], w[:12], b[:12])
