"""The input phase of the partitioned recurrence (partition.h's InputPhase):
rnn_ext::lstm_layer_forward / lstm_layer_infer compute the input gates
inside the loop, each worker from its own rows of W_ih.  Against the
projection followed by the sequence op and the reference, at every worker
count, bitwise repeatable; fp32 through brgemm against fp64; every element
written; bad input named; and when the modules take it
(rnn_ext/_layer.py's input_phase)."""
import copy

import pytest
import torch
import torch.nn.functional as F

import rnn_ext
from _poison import poisoned_allocations
from _utils import TOL, make_module, outputs_and_grads, rnn_ext_op_names
from rnn_ext import _layer, _projection, functional
from test_partition import WORKERS, _allocated_bytes, cpu_stepwise, cpu_workers

ops = torch.ops.rnn_ext
# T, B, I, H, P, lengths: H=37 is not divisible by any worker count, H=3
# gives more workers than units; sorted lengths shrink the products step by
# step (down to 0 rows); unsorted ones keep all rows.
CASES = [
    (6, 4, 5, 37, 0, None),
    (6, 4, 9, 37, 11, None),
    (5, 5, 4, 3, 0, [5, 4, 4, 2, 0]),
    (5, 5, 6, 20, 7, [2, 5, 0, 3, 5]),
    (1, 1, 3, 5, 0, None),
]
IDS = ["h37", "h37-proj", "h3-sorted", "h20-proj-unsorted", "t1-b1"]

# fp32: the per-worker products on brgemm's panels (W_ih's beside W_hh's and
# W_hr's: three slabs), or MKL's.  I=1030 makes the input product (and the
# input gradient's width) larger than one panel block (1024).
FP32_CASES = [(7, 5, 19, 80, 24, [7, 6, 6, 3, 1]), (6, 4, 40, 37, 0, None),
              (2, 3, 1030, 16, 0, None)]
fp32_cases = pytest.mark.parametrize("case", FP32_CASES,
                                     ids=["h80-proj-sorted", "h37", "i1030-deep"])


@pytest.fixture(params=["brgemm", "mkl"])
def gemm(request, monkeypatch):
    """The CPU executor's fp32 products: brgemm's panels or MKL's."""
    monkeypatch.setenv("RNN_EXT_CPU_BRGEMM", "1" if request.param == "brgemm" else "0")
    return request.param


def _assert_fp32_close(got, want, torch32):
    """fp32 against fp64: within 1e-4, or twice PyTorch's own fp32 error
    (torch32) where that is larger (deep products)."""
    twice_torch = 2 * (torch32.double() - want).abs().max().item()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=max(1e-4, twice_torch))


def _layer_inputs(case, dtype=torch.float64, bias=True, zero_state=False, seed=0):
    """[x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0], lengths."""
    T, B, I, H, P, lengths = case
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    hout = P or H
    h0, c0 = r(B, hout), r(B, H)
    if zero_state:
        h0, c0 = torch.zeros_like(h0), torch.zeros_like(c0)
    args = [r(T, B, I), r(4 * H, I, scale=0.5), r(4 * H) if bias else None,
            r(4 * H, hout, scale=0.4), r(4 * H) if bias else None,
            r(P, H, scale=0.4) if P else None, h0, c0]
    return args, torch.tensor(lengths) if lengths else None


def _two_calls(args, L, training=True):
    """The projection, then the sequence op: what the input phase replaces."""
    x, w_ih, b_ih, *rest = args
    gx = F.linear(x, w_ih, b_ih)
    if training:
        return ops.lstm_forward(gx, *rest, L)
    return ops.lstm_infer(gx, *rest, L)


def _reference(args, L):
    """The reference backend's (y, h_n, c_n)."""
    x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0 = args
    return functional.lstm(F.linear(x, w_ih, b_ih), w_hh, b_hh, w_hr, h0, c0, lengths=L,
                           backend="reference")[:3]


def _layer_twice(args, L, k, training=True):
    """The layer op with k workers, checked bitwise repeatable."""
    op = ops.lstm_layer_forward if training else ops.lstm_layer_infer
    with cpu_workers(k):
        out = op(*args, L)
        again = op(*args, L)
    for a, b in zip(out, again):
        assert torch.equal(a, b), f"{k} workers: not bitwise repeatable"
    return out


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_every_worker_count_matches_the_two_calls(case, bias):
    args, L = _layer_inputs(case, bias=bias)
    ref = _reference(args, L)
    two = _two_calls(args, L)
    results = {}
    for k in WORKERS:
        out = _layer_twice(args, L, k)
        # y, h_n, c_n against the reference; the workspace (gates, cell) and
        # the projection input against the two calls' own.
        for got, want in zip(out[:3], ref):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        for got, want in zip(out, two):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        infer = _layer_twice(args, L, k, training=False)
        for a, b in zip(infer, out[:3]):
            assert torch.equal(a, b), "inference and training forwards differ"
        results[k] = out
    for k in WORKERS[1:]:
        for a, b in zip(results[k], results[1]):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def _backward_args(args, L, seed=3):
    """The forward's results and random output gradients: the backward
    ops' arguments after w_ih (w_hh, w_hr, h0, c0, y, ws, proj_in, L)."""
    x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0 = args
    y, h_n, c_n, ws, proj_in = ops.lstm_layer_forward(*args, L)
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (y, h_n, c_n)]
    return grads, (w_hh, w_hr, h0, c0, y, ws, proj_in, L)


@pytest.mark.parametrize("grad_h0", [True, False], ids=["grad-h0", "no-grad-h0"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_every_worker_count_matches_the_product(case, grad_h0):
    """lstm_layer_backward: the input's gradient computed in the loop is
    d_gates W_ih, and the rest is lstm_backward's, bitwise."""
    args, L = _layer_inputs(case)
    x, w_ih = args[:2]
    grads, rest = _backward_args(args, L)
    results = {}
    for k in WORKERS:
        with cpu_workers(k):
            want = ops.lstm_backward(*grads, *rest, None, grad_h0)
            got = ops.lstm_layer_backward(*grads, w_ih, *rest, grad_h0)
            again = ops.lstm_layer_backward(*grads, w_ih, *rest, grad_h0)
        for a, b in zip(got, again):
            assert torch.equal(a, b), f"{k} workers: not bitwise repeatable"
        for a, b in zip(got[1:], want):
            assert torch.equal(a, b)
        torch.testing.assert_close(got[0], want[0] @ w_ih, rtol=1e-10, atol=1e-12)
        results[k] = got
    for k in WORKERS[1:]:
        for a, b in zip(results[k], results[1]):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@fp32_cases
def test_backward_fp32_matches_fp64(case, gemm):
    args, L = _layer_inputs(case, dtype=torch.float32)
    grads, rest = _backward_args(args, L)
    w_ih = args[1]
    exact = [t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
             for t in (*grads, *rest)]
    want = ops.lstm_backward(*exact, None)[0].double() @ w_ih.double()
    torch32 = ops.lstm_backward(*grads, *rest, None)[0] @ w_ih  # PyTorch's fp32 product
    for k in (1, 3):
        with cpu_workers(k):
            _assert_fp32_close(ops.lstm_layer_backward(*grads, w_ih, *rest)[0], want, torch32)


# A zero initial state skips step 0's recurrent product (B=16, H=128 is above
# the size where the test pays, rnn_ops_cpu.cpp's h0_zero): the input phase
# must still give step 0 its input gates.
@pytest.mark.parametrize("T", [1, 4])
def test_zero_initial_state(T):
    args, L = _layer_inputs((T, 16, 24, 128, 0, None), zero_state=True)
    ref = _reference(args, L)
    for k in (1, 2):
        for got, want in zip(_layer_twice(args, L, k)[:3], ref):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@fp32_cases
def test_fp32_matches_fp64(case, gemm):
    args, L = _layer_inputs(case, dtype=torch.float32)
    exact = [None if t is None else t.double() for t in args]
    want = _reference(exact, L)
    torch32 = _reference(args, L)  # PyTorch's own fp32 error, for the tolerance
    for k in (1, 3):
        for got, w, t32 in zip(_layer_twice(args, L, k)[:3], want, torch32):
            _assert_fp32_close(got, w, t32)


@pytest.mark.parametrize("workers", [1, 3])
def test_poisoned_buffers_every_element_written(workers):
    args, L = _layer_inputs((5, 4, 6, 9, 4, [2, 5, 0, 4]))
    with cpu_workers(workers):
        clean = ops.lstm_layer_forward(*args, L)
        with poisoned_allocations():
            poisoned = ops.lstm_layer_forward(*args, L)
            infer = ops.lstm_layer_infer(*args, L)
    for a, b in zip(clean, poisoned):
        assert torch.equal(a, b)
    for a, b in zip(clean[:3], infer):
        assert torch.equal(a, b)
    grads, rest = _backward_args(args, L)
    with cpu_workers(workers):
        clean = ops.lstm_layer_backward(*grads, args[1], *rest)
        with poisoned_allocations():
            poisoned = ops.lstm_layer_backward(*grads, args[1], *rest)
    for a, b in zip(clean, poisoned):
        assert torch.equal(a, b)


def test_stepwise_loop_and_other_dtypes_project_first():
    """The stepwise loop and fp16/bf16 have no input phase: the op projects,
    then runs the sequence op, bitwise the two calls."""
    args, L = _layer_inputs(CASES[3])
    with cpu_stepwise():
        for a, b in zip(ops.lstm_layer_forward(*args, L), _two_calls(args, L)):
            assert torch.equal(a, b)
        grads, rest = _backward_args(args, L)
        want = ops.lstm_backward(*grads, *rest, None)
        got = ops.lstm_layer_backward(*grads, args[1], *rest)
        for a, b in zip(got[1:], want):
            assert torch.equal(a, b)
        assert torch.equal(got[0], want[0] @ args[1])
    bf16 = [None if t is None else t.bfloat16() for t in args]
    for a, b in zip(ops.lstm_layer_infer(*bf16, L), _two_calls(bf16, L, training=False)):
        assert torch.equal(a, b)


def test_inference_writes_no_workspace():
    T, B, I, H = 64, 4, 8, 16
    args, _ = _layer_inputs((T, B, I, H, 0, None), dtype=torch.float32)
    workspace, outputs = T * B * 5 * H * 4, T * B * H * 4
    with cpu_workers(2):
        train = _allocated_bytes(lambda: ops.lstm_layer_forward(*args, None))
        infer = _allocated_bytes(lambda: ops.lstm_layer_infer(*args, None))
    assert train >= workspace + outputs
    # No [T, B, 4H] input gates either: that alone would be 4 * outputs.
    assert infer < outputs + max(workspace // 8, B * H * 4 * 4), (infer, outputs)


@pytest.mark.parametrize("bad,match", [
    (lambda a: [a[0][0]] + a[1:], "input must be 3-D"),
    (lambda a: [a[0], a[1][:, :-1]] + a[2:], "w_ih of shape"),
    (lambda a: [a[0], a[1].float()] + a[2:], "w_ih .* must have the input's dtype"),
    (lambda a: a[:2] + [a[2][:-1]] + a[3:], "b_ih"),
    (lambda a: a[:6] + [a[6][:, :-1]] + a[7:], "h0"),
])
def test_bad_input_is_named(bad, match):
    args, L = _layer_inputs(CASES[0])
    for op in (ops.lstm_layer_forward, ops.lstm_layer_infer):
        with pytest.raises(RuntimeError, match=match):
            op(*bad(args), L)


@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
@pytest.mark.parametrize("lengths", [None, [3, 1]], ids=["full", "lengths"])
def test_opcheck(proj, lengths):
    args, L = _layer_inputs((3, 2, 5, 4, 3 if proj else 0, lengths))
    torch.library.opcheck(ops.lstm_layer_forward, (*args, L))
    torch.library.opcheck(ops.lstm_layer_infer, (*args, L))
    grads, rest = _backward_args(args, L)
    torch.library.opcheck(ops.lstm_layer_backward, (*grads, args[1], *rest))
    torch.library.opcheck(ops.lstm_layer_backward, (*grads, args[1], *rest, False))


def test_backward_bad_input_is_named():
    args, L = _layer_inputs(CASES[0])
    grads, rest = _backward_args(args, L)
    with pytest.raises(RuntimeError, match="w_ih of shape"):
        ops.lstm_layer_backward(*grads, args[1][:-1], *rest)
    with pytest.raises(RuntimeError, match="w_ih has dtype"):
        ops.lstm_layer_backward(*grads, args[1].float(), *rest)


# ----------------------------------------------------------- the modules --
@pytest.mark.parametrize("kw", [{}, dict(num_layers=2, bidirectional=True, proj_size=3),
                                dict(batch_first=True, bias=False)],
                         ids=["plain", "bidir-2layer-proj", "batch-first-no-bias"])
@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
def test_modules_match_nn_fp64(kw, with_state, monkeypatch):
    """Forced on (RNN_EXT_CPU_INPUT_PHASE=1), an LSTM's values and every
    gradient match torch.nn in fp64; the layers run the layer ops."""
    monkeypatch.setenv(_layer.INPUT_PHASE_ENV, "1")
    torch.manual_seed(0)
    nn_module = make_module("lstm", 5, 6, dtype=torch.float64, **kw)
    module = rnn_ext.convert(copy.deepcopy(nn_module), backend="cpu")
    B, T = 3, 7
    g = torch.Generator().manual_seed(1)
    x = torch.randn((B, T, 5) if module.batch_first else (T, B, 5), generator=g,
                    dtype=torch.float64, requires_grad=True)
    hx = None
    if with_state:
        LD = module.num_layers * (2 if module.bidirectional else 1)
        hx = (torch.randn(LD, B, module.proj_size or 6, generator=g, dtype=torch.float64,
                          requires_grad=True),
              torch.randn(LD, B, 6, generator=g, dtype=torch.float64, requires_grad=True))
    (y, (h, c)), names = rnn_ext_op_names(lambda: module(x, hx))
    assert "rnn_ext::lstm_layer_forward" in names and "rnn_ext::lstm_forward" not in names, names
    y_nn, (h_nn, c_nn) = nn_module(x, hx)
    wrt = [x, *(hx or ()), *module.parameters()]
    got, names = rnn_ext_op_names(lambda: outputs_and_grads((y, h, c), wrt))
    assert "rnn_ext::lstm_layer_backward" in names and "rnn_ext::lstm_backward" not in names, names
    wrt_nn = [x, *(hx or ()), *nn_module.parameters()]
    want = outputs_and_grads((y_nn, h_nn, c_nn), wrt_nn)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    with torch.no_grad():
        (y_inf, _), names = rnn_ext_op_names(lambda: module(x, hx))
    assert names == {"rnn_ext::lstm_layer_infer"}, names
    assert torch.equal(y_inf, y.detach()), "inference and training forwards differ"


def test_module_gradcheck(monkeypatch):
    monkeypatch.setenv(_layer.INPUT_PHASE_ENV, "1")
    torch.manual_seed(0)
    module = rnn_ext.LSTM(3, 4, num_layers=2, proj_size=2, backend="cpu").double()
    names = [n for n, _ in module.named_parameters()]
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)

    def run(x, h0, c0, *params):
        y, (h, c) = torch.func.functional_call(module, dict(zip(names, params)), (x, (h0, c0)))
        return y, h, c

    params = tuple(module.parameters())
    assert torch.autograd.gradcheck(run, (x, h0, c0, *params))
    assert torch.autograd.gradgradcheck(lambda *a: run(*a, *params), (x, h0, c0))


ZEN5 = _projection.RULES["AVX512-ZEN5"]


@pytest.mark.parametrize("kind,B,H,dtype,env,want", [
    ("lstm", 16, 256, torch.float32, None, True),
    ("lstm", 4, 512, torch.float32, None, True),      # W_ih + W_hh: 8 MiB, the limit
    ("lstm", 64, 512, torch.float32, None, True),
    ("lstm", 2, 256, torch.float32, None, False),     # below the batch
    ("lstm", 16, 768, torch.float32, None, False),    # 18 MiB of weights
    ("lstm", 16, 256, torch.float64, None, False),    # fp32 only by the rule
    ("gru", 16, 256, torch.float32, None, False),     # LSTM only
    ("lstm", 16, 256, torch.float32, "0", False),
    ("lstm", 1, 256, torch.float64, "1", True),
    ("lstm", 1, 256, torch.bfloat16, "1", False),     # no input phase in bf16
    ("gru", 16, 256, torch.float32, "1", False),
])
def test_rule(kind, B, H, dtype, env, want, monkeypatch):
    monkeypatch.setattr(_projection, "RULE", ZEN5)
    if env is None:
        monkeypatch.delenv(_layer.INPUT_PHASE_ENV, raising=False)
    else:
        monkeypatch.setenv(_layer.INPUT_PHASE_ENV, env)
    x = torch.empty(3, B, H, dtype=dtype)
    G = 4 if kind == "lstm" else 3
    w = torch.empty(G * H, H, dtype=dtype)
    assert _layer.input_phase(kind, x, w, w) is want


def test_rule_follows_brgemm_switch(monkeypatch):
    monkeypatch.setattr(_projection, "RULE", ZEN5)
    monkeypatch.delenv(_layer.INPUT_PHASE_ENV, raising=False)
    x, w = torch.empty(3, 16, 256), torch.empty(1024, 256)
    monkeypatch.setenv("RNN_EXT_CPU_BRGEMM", "0")
    assert not _layer.input_phase("lstm", x, w, w)
    for rule in (_projection.RULES["AVX512"], _projection.RULES["AVX2"], None):
        monkeypatch.delenv("RNN_EXT_CPU_BRGEMM", raising=False)
        monkeypatch.setattr(_projection, "RULE", rule)
        assert not _layer.input_phase("lstm", x, w, w)  # measured on a Zen 5 only
