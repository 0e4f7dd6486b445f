"""The partitioned recurrence on the CPU (csrc/include/rnn_ext/partition.h run
by csrc/cpu/persistent.h): every worker count gives the reference's numbers,
each count is bitwise repeatable, and inference keeps no workspace."""
import contextlib
import functools

import pytest
import torch

import rnn_ext
from _poison import poisoned_allocations
from _utils import outputs_and_grads, rnn_ext_op_names
from rnn_ext import _C, functional

ops = torch.ops.rnn_ext
WORKERS = (1, 2, 3, 5, 8)
# T, B, H, P, lengths: H=37 is not divisible by any count above; H=3 gives
# more workers than units (empty slices that still meet at every barrier).
CASES = [
    (6, 4, 37, 0, None),
    (6, 4, 37, 11, None),
    (5, 5, 3, 0, [5, 4, 4, 2, 0]),   # sorted lengths: the GEMMs shrink
    (5, 5, 20, 7, [2, 5, 0, 3, 5]),  # unsorted lengths, projection
    (1, 1, 5, 0, None),
]
IDS = ["h37", "h37-proj", "h3-sorted", "h20-proj-unsorted", "t1-b1"]


@contextlib.contextmanager
def cpu_workers(n):
    previous = _C._set_cpu_workers(n)
    try:
        yield
    finally:
        _C._set_cpu_workers(previous)


@contextlib.contextmanager
def cpu_stepwise(on=True):
    """The cpu ops on the stepwise loop (ops/sequence.h) instead of the
    partitioned one."""
    previous = _C._set_cpu_stepwise(on)
    try:
        yield
    finally:
        _C._set_cpu_stepwise(previous)


def _inputs(kind, case, dtype=torch.float64, grad=True, seed=0):
    T, B, H, P, lengths = case
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_(grad)

    L = torch.tensor(lengths) if lengths else None
    if kind == "lstm":
        hout = P or H
        return [r(T, B, 4 * H), r(4 * H, hout, scale=0.4), r(4 * H), r(P, H, scale=0.4) if P else None,
                r(B, hout), r(B, H)], L
    G = 3 if kind == "gru" else 1
    return [r(T, B, G * H), r(G * H, H, scale=0.4), r(G * H), r(B, H)], L


def _function(kind):
    """functional.lstm / gru / rnn (kind "rnn_tanh" or "rnn_relu")."""
    if kind.startswith("rnn_"):
        nonlinearity = kind[4:]
        return lambda *a, **k: functional.rnn(*a, nonlinearity=nonlinearity, **k)
    return getattr(functional, kind)


def _run(kind, inputs, L, backend):
    outs = _function(kind)(*inputs, lengths=L, backend=backend)
    return outputs_and_grads(outs, [t for t in inputs if t is not None])


def _run_cpu_twice(kind, inputs, L, k):
    """Outputs and gradients on the cpu backend with k workers, checked to be
    bitwise identical across two runs."""
    with cpu_workers(k):
        out, grads = _run(kind, inputs, L, "cpu")
        again = _run(kind, inputs, L, "cpu")
    for a, b in zip(out + grads, again[0] + again[1]):
        assert torch.equal(a, b), f"{k} workers: not bitwise repeatable"
    return out, grads


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("case", [c for c in CASES], ids=IDS)
def test_every_worker_count_matches_reference(kind, case):
    if kind != "lstm" and case[3]:
        pytest.skip("projection is LSTM only")
    inputs, L = _inputs(kind, case)
    ref_out, ref_grads = _run(kind, inputs, L, "reference")
    results = {}
    for k in WORKERS:
        out, grads = _run_cpu_twice(kind, inputs, L, k)
        for got, want in zip(out + grads, ref_out + ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        results[k] = out + grads
    for k in WORKERS[1:]:  # counts agree with each other to fp64 rounding
        for a, b in zip(results[k], results[1]):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


# A zero initial state (the modules' when hx is None) lets step 0 skip its
# recurrent product in the forward and its term of dW_hh in the backward,
# where the product has at least 2^18 multiply-adds (rnn_ops_cpu.cpp,
# h0_zero): B=16, H=128 is above that for every cell.  T=1: dW_hh is then
# that term alone.  h0 requires grad, so its gradient is still computed.
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("T,lengths", [(1, None), (4, None), (4, [4, 3] + [2] * 14)],
                         ids=["t1", "t4", "t4-sorted"])
def test_zero_initial_state_skips_step_zero_products(kind, T, lengths):
    inputs, L = _inputs(kind, (T, 16, 128, 0, lengths))
    for i in range(4, len(inputs)):  # h0 (and c0): zeros
        inputs[i] = torch.zeros_like(inputs[i]).requires_grad_()
    ref_out, ref_grads = _run(kind, inputs, L, "reference")
    for k in (1, 2):
        out, grads = _run_cpu_twice(kind, inputs, L, k)
        for got, want in zip(out + grads, ref_out + ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _grads_without_h0_grad(inputs, L, fn, h0_index):
    """Outputs and gradients with h0 requiring grad, then without: the
    gradients of the other inputs, in order."""
    wrt = [t for t in inputs if t is not None]
    full = outputs_and_grads(fn(*inputs, lengths=L, backend="cpu"), wrt)
    h0 = inputs[h0_index]
    inputs = list(inputs)
    inputs[h0_index] = h0.detach()
    rest = [t for t in inputs if t is not None and t.requires_grad]
    part = outputs_and_grads(fn(*inputs, lengths=L, backend="cpu"), rest)
    keep = [i for i, t in enumerate(wrt) if t is not h0]
    return full[0], [full[1][i] for i in keep], part


# Without h0's gradient (hx not given to a module) the backward skips the
# product that turns the carried dh into it (bool grad_h0 of the backward
# ops): every other output and gradient is bitwise the same, on both loops
# and for the pair ops; the op itself returns zeros for h0's gradient.
@pytest.mark.parametrize("loop", ["partitioned", "stepwise"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=[IDS[1], IDS[3]])
def test_without_h0_gradient_the_rest_is_unchanged(loop, kind, case):
    if kind != "lstm" and case[3]:
        case = case[:3] + (0,) + case[4:]
    h0_index = 4 if kind == "lstm" else 3
    with cpu_stepwise(loop == "stepwise"):
        inputs, L = _inputs(kind, case)
        out, grads, (out2, grads2) = _grads_without_h0_grad(inputs, L, _function(kind), h0_index)
        for a, b in zip(out + grads, out2 + grads2):
            assert torch.equal(a, b)
        # The pair op: both directions stacked.
        pair = getattr(functional, kind.split("_")[0] + "_pair")
        if kind.startswith("rnn_"):
            pair = functools.partial(pair, nonlinearity=kind[4:])
        stacked = [None if t is None else torch.stack([t.detach(), t.detach().flip(0)])
                   .requires_grad_() for t in inputs]
        out, grads, (out2, grads2) = _grads_without_h0_grad(stacked, L, pair, h0_index)
        for a, b in zip(out + grads, out2 + grads2):
            assert torch.equal(a, b)


@pytest.mark.parametrize("loop", ["partitioned", "stepwise"])
def test_backward_op_without_h0_gradient_returns_zeros(loop):
    inputs, L = _inputs("lstm", CASES[1], grad=False)
    gx, w_hh, b_hh, w_hr, h0, c0 = inputs
    with cpu_stepwise(loop == "stepwise"):
        y, h_n, c_n, ws, proj_in = ops.lstm_forward(gx, w_hh, b_hh, w_hr, h0, c0, L)
        grads = [torch.randn_like(t) for t in (y, h_n, c_n)]
        args = (*grads, w_hh, w_hr, h0, c0, y, ws, proj_in, L, None)
        full = ops.lstm_backward(*args)
        part = ops.lstm_backward(*args, grad_h0=False)
    assert full[4].abs().sum() > 0
    assert torch.equal(part[4], torch.zeros_like(full[4]))
    for i in (0, 1, 2, 3, 5):
        assert torch.equal(part[i], full[i]), i


# fp32 runs the recurrent products through oneDNN's brgemm on packed panels
# of 24 or 64 columns (csrc/cpu/persistent.h): H=80 gives several panels and
# a partial one per worker; sorted lengths shrink the rows step by step down
# to one (brgemm at every row count).  H=1030 makes every product deeper
# than one block of blas::panel_depth() (1024): the forward's (k = H) in
# two blocks, the backward's (k = G*H) in up to five.
FP32_CASES = [(7, 5, 80, 24, [7, 6, 6, 3, 1]), (6, 4, 37, 0, None), (2, 2, 1030, 0, None)]


@contextlib.contextmanager
def onednn_weight_grads(rows):
    """The CPU ops' dW_hh and dW_hr through oneDNN from `rows` summed rows on
    (negative: MKL), whatever this machine's rule (rnn_ext/_projection.py)."""
    previous = _C._set_onednn_weight_grad_rows(rows)
    try:
        yield
    finally:
        _C._set_onednn_weight_grad_rows(previous)


@pytest.mark.parametrize("weight_grads", ["onednn", "mkl"], ids=["wgrad-onednn", "wgrad-mkl"])
@pytest.mark.parametrize("gemm", ["brgemm", "mkl"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("case", FP32_CASES, ids=["h80-proj-sorted", "h37", "h1030-deep"])
def test_fp32_products_match_fp64_reference(kind, case, gemm, weight_grads, monkeypatch):
    if kind != "lstm" and case[3]:
        case = case[:3] + (0,) + case[4:]
    monkeypatch.setenv("RNN_EXT_CPU_BRGEMM", "1" if gemm == "brgemm" else "0")
    inputs, L = _inputs(kind, case, dtype=torch.float32)
    exact = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    ref_out, ref_grads = _run(kind, exact, L, "reference")
    # PyTorch's own fp32 error (the reference backend's ops in fp32): deep
    # products (H=1030) round more than the 1e-4 the others are held to.
    torch_out, torch_grads = _run(kind, inputs, L, "reference")
    for k in (1, 3):
        with onednn_weight_grads(0 if weight_grads == "onednn" else -1):
            out, grads = _run_cpu_twice(kind, inputs, L, k)
        for got, want, torch32 in zip(out + grads, ref_out + ref_grads, torch_out + torch_grads):
            twice_torch = 2 * (torch32.double() - want).abs().max().item()
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=max(1e-4, twice_torch))


@pytest.mark.parametrize("panels", ["panels", "in-place"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_single_row_fp32_panels_or_in_place_match_fp64(kind, panels):
    # At B = 1 W_hh goes into panels up to the rule's size
    # (_C._set_single_row_panel_bytes), past it MKL multiplies in place:
    # both ways, forward and backward (the backward's column panels too),
    # with a projection for the LSTM.
    case = (5, 1, 40, 12 if kind == "lstm" else 0, None)
    previous = _C._set_single_row_panel_bytes(1 << 40 if panels == "panels" else 0)
    try:
        inputs, L = _inputs(kind, case, dtype=torch.float32)
        exact = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
        ref_out, ref_grads = _run(kind, exact, L, "reference")
        for k in (1, 3):
            out, grads = _run_cpu_twice(kind, inputs, L, k)
            for got, want in zip(out + grads, ref_out + ref_grads):
                torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    finally:
        _C._set_single_row_panel_bytes(previous)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
@pytest.mark.parametrize("workers", [1, 3])
def test_poisoned_buffers_every_element_written(kind, workers):
    """NaN-filled allocations: every output, state and gradient element (and,
    for inference, every output) is written by the partitioned loop."""
    case = (5, 4, 9, 4 if kind == "lstm" else 0, [2, 5, 0, 4])
    inputs, L = _inputs(kind, case)
    fn = _function(kind)
    with cpu_workers(workers):
        clean = _run(kind, inputs, L, "cpu")
        with poisoned_allocations():
            poisoned = _run(kind, inputs, L, "cpu")
        with torch.no_grad():
            infer_clean = fn(*inputs, lengths=L, backend="cpu", need_workspace=False)
            with poisoned_allocations():
                infer_poisoned = fn(*inputs, lengths=L, backend="cpu", need_workspace=False)
    for a, b in zip(clean[0] + clean[1], poisoned[0] + poisoned[1]):
        assert torch.equal(a, b)
    assert infer_clean[-1] is None and infer_poisoned[-1] is None
    for a, b in zip(infer_clean[:-1], infer_poisoned[:-1]):
        assert torch.equal(a, b)
    for a, b in zip(infer_clean[:-1], clean[0]):
        assert torch.equal(a, b), "inference and training forwards differ"


def _allocated_bytes(fn):
    """Bytes the CPU allocator handed out while fn ran, whether freed again
    or not: the allocation events of the profiler's event tree."""
    from torch._C._profiler import _EventType

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    total, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation and e.extra_fields.alloc_size > 0:
            total += e.extra_fields.alloc_size
        stack.extend(e.children)
    return total


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_inference_writes_no_workspace(kind):
    T, B, H = 64, 4, 16
    ws_blocks = {"lstm": 5, "gru": 4}.get(kind, 1)
    inputs, _ = _inputs(kind, (T, B, H, 0, None), dtype=torch.float32, grad=False)
    fn = _function(kind)
    workspace = T * B * ws_blocks * H * 4
    outputs = T * B * H * 4
    with cpu_workers(2):
        train = _allocated_bytes(lambda: fn(*inputs, backend="cpu", need_workspace=True))
        infer = _allocated_bytes(lambda: fn(*inputs, backend="cpu", need_workspace=False))
    assert train >= workspace + outputs  # the check sees the workspace when there is one
    assert infer < outputs + max(workspace // 8, B * H * 4 * 2), (infer, outputs, workspace)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_modules_use_inference_ops_without_grad(kind):
    """Under no_grad (and for inputs and weights that need no gradient), the
    modules call the inference ops; with gradients, the training ops."""
    cls = {"lstm": rnn_ext.LSTM, "gru": rnn_ext.GRU, "rnn": rnn_ext.RNN}[kind]
    m = cls(4, 6, num_layers=2, bidirectional=True, backend="cpu").double()
    x = torch.randn(5, 3, 4, dtype=torch.float64)

    def op_names(fn):
        return rnn_ext_op_names(fn)[1]

    with torch.no_grad():
        names = op_names(lambda: m(x))
    assert names == {f"rnn_ext::{kind}_infer"}, names
    names = op_names(lambda: m(x))
    assert names == {f"rnn_ext::{kind}_forward"}, names
    with torch.no_grad():  # internals need the workspace, even without grad
        names = op_names(lambda: m.forward_with_internals(x))
    assert names == {f"rnn_ext::{kind}_forward"}, names
    with torch.no_grad():
        want = m(x)
    got = m(x)
    torch.testing.assert_close(got[0].detach(), want[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_low_precision_long_sequence_within_twice_torch_error(kind, dtype):
    """What is carried from step to step (recurrent product, cell state, dh)
    stays in fp32: at T=1024 the error of outputs and of every gradient is
    at most 2x torch.nn's own error at that dtype, both against fp64."""
    T, B, I, H = 1024, 1, 4, 16
    torch.manual_seed(0)
    nn_cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    ref = nn_cls(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64)

    def run(module_cls, dtype, **kw):
        m = module_cls(I, H, **kw)
        m.load_state_dict(ref.state_dict())
        m = m.to(dtype)
        xi = x.to(dtype).detach().clone().requires_grad_()
        y, _ = m(xi)
        g = torch.Generator().manual_seed(3)
        w = torch.randn(y.shape, generator=g, dtype=torch.float64)
        (y.double() * w).sum().backward()
        return [y.double(), xi.grad.double()] + [p.grad.double() for p in m.parameters()]

    exact = run(nn_cls, torch.float64)
    theirs = run(nn_cls, dtype)
    ours = run(rnn_ext.LSTM if kind == "lstm" else rnn_ext.GRU, dtype, backend="cpu")
    names = ["output", "grad_input"] + [n for n, _ in ref.named_parameters()]
    for name, e, t, o in zip(names, exact, theirs, ours):
        scale = e.abs().max()
        err_torch = (t - e).abs().max() / scale
        err_ours = (o - e).abs().max() / scale
        assert err_ours <= 2 * err_torch + 1e-3 * float(torch.finfo(dtype).eps), \
            f"{name}: rnn_ext {err_ours:.3g} vs torch.nn {err_torch:.3g}"
