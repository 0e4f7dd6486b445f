"""Bad input gets a clear error naming the problem: wrong ranks, mismatched
sizes, dtypes or devices, lengths out of range, unknown or unavailable
backends."""
import pytest
import torch

from _utils import cpu_backends
from rnn_ext import functional

T, B, H = 3, 2, 4


def lstm_args(**over):
    args = dict(input_gates=torch.randn(T, B, 4 * H), w_hh=torch.randn(4 * H, H),
                b_hh=torch.randn(4 * H), w_hr=None, h0=torch.randn(B, H), c0=torch.randn(B, H),
                lengths=None)
    args.update(over)
    return args


def gru_args(**over):
    args = dict(input_gates=torch.randn(T, B, 3 * H), w_hh=torch.randn(3 * H, H),
                b_hh=torch.randn(3 * H), h0=torch.randn(B, H), lengths=None)
    args.update(over)
    return args


LSTM_BAD = [
    (dict(input_gates=torch.randn(B, 4 * H)), "3-D"),
    (dict(input_gates=torch.randn(T, B, 4 * H + 1)), "4H"),
    (dict(input_gates=torch.randn(0, B, 4 * H)), "sequence length"),
    (dict(w_hh=torch.randn(4 * H, H + 1)), "w_hh"),
    (dict(w_hh=torch.randn(4 * H)), "w_hh"),
    (dict(b_hh=torch.randn(3 * H)), "b_hh"),
    (dict(h0=torch.randn(B + 1, H)), "h0"),
    (dict(c0=torch.randn(B, H, 1)), "c0"),
    (dict(w_hr=torch.randn(2, H + 1)), "w_hr"),
    (dict(h0=torch.randn(B, H, dtype=torch.float64)), "dtype"),
    (dict(w_hh=torch.randn(4 * H, H).to(torch.float64)), "dtype"),
    (dict(input_gates=torch.randint(0, 3, (T, B, 4 * H))), "dtype torch.int64"),
    (dict(lengths=[1, T + 1]), "out of range"),
    (dict(lengths=[-1, 2]), "out of range"),
    (dict(lengths=[1, 2, 3]), "lengths"),
    (dict(lengths=[1.0, 2.0]), "integers"),
    (dict(lengths=[[1, 2]]), "lengths must have shape"),
]


# One set of checks (rnn_ext/_checks.py) for every backend: the reference
# backend rejects what the kernels reject.
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("over,match", LSTM_BAD, ids=[m + str(i) for i, (_, m) in enumerate(LSTM_BAD)])
def test_lstm_bad_input(over, match, backend):
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        functional.lstm(**lstm_args(**over), backend=backend)


GRU_BAD = [
    (dict(input_gates=torch.randn(T, B)), "3-D"),
    (dict(input_gates=torch.randn(T, B, 3 * H + 2)), "3H"),
    (dict(w_hh=torch.randn(3 * H, H + 2)), "w_hh"),
    (dict(h0=torch.randn(B, H + 1)), "h0"),
    (dict(b_hh=torch.randn(3 * H, dtype=torch.float64)), "dtype"),
    (dict(lengths=[T + 1, 1]), "out of range"),
    (dict(lengths=[-2, 1]), "out of range"),
    (dict(lengths=[[1], [2]]), "lengths must have shape"),
    (dict(input_gates=torch.randn(0, B, 3 * H)), "sequence length"),
]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("over,match", GRU_BAD, ids=[m + str(i) for i, (_, m) in enumerate(GRU_BAD)])
def test_gru_bad_input(over, match, backend):
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        functional.gru(**gru_args(**over), backend=backend)


def rnn_args(**over):
    args = dict(input_gates=torch.randn(T, B, H), w_hh=torch.randn(H, H), b_hh=torch.randn(H),
                h0=torch.randn(B, H), lengths=None)
    args.update(over)
    return args


RNN_BAD = [
    (dict(input_gates=torch.randn(T, B)), "3-D"),
    (dict(input_gates=torch.randn(T, 0, H)), "h0"),  # an empty batch is fine, its h0 must be too
    (dict(input_gates=torch.randn(0, B, H)), "sequence length"),
    (dict(w_hh=torch.randn(H, H + 2)), "w_hh"),
    (dict(b_hh=torch.randn(H + 1)), "b_hh"),
    (dict(h0=torch.randn(B, H + 1)), "h0"),
    (dict(h0=torch.randn(B, H, dtype=torch.float64)), "dtype"),
    (dict(lengths=[T + 1, 1]), "out of range"),
    (dict(nonlinearity="sigmoid"), "nonlinearity"),
]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("over,match", RNN_BAD, ids=[m + str(i) for i, (_, m) in enumerate(RNN_BAD)])
def test_rnn_bad_input(over, match, backend):
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        functional.rnn(**rnn_args(**over), backend=backend)


@pytest.mark.parametrize("backend", cpu_backends())
def test_rnn_unknown_nonlinearity_on_every_backend(backend):
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        functional.rnn(**rnn_args(), nonlinearity="sigmoid", backend=backend)


def test_rnn_op_rejects_unknown_nonlinearity():
    import rnn_ext._ops as o

    a = rnn_args()
    with pytest.raises(RuntimeError, match="unknown nonlinearity 'gelu'"):
        o.ops.rnn_forward(a["input_gates"], a["w_hh"], a["b_hh"], a["h0"], None, "gelu")
    y, hn, ws = o.ops.rnn_forward(a["input_gates"], a["w_hh"], a["b_hh"], a["h0"], None, "relu")
    with pytest.raises(RuntimeError, match="unknown nonlinearity"):
        o.ops.rnn_backward(y, hn, a["w_hh"], a["h0"], y, ws, None, None, "gelu")
    with pytest.raises(RuntimeError, match="expected w_hh of shape"):
        o.ops.rnn_backward(y, hn, a["w_hh"][:, :-1], a["h0"], y, ws, None, None, "relu")


def test_device_mismatch_is_named():
    args = lstm_args(h0=torch.randn(B, H, device="meta"))
    with pytest.raises(RuntimeError, match="meta"):
        functional.lstm(**args, backend="cpu")


def test_lengths_on_wrong_device_or_dtype():
    import rnn_ext._ops as o

    a = lstm_args()
    with pytest.raises(RuntimeError, match="int64"):
        o.ops.lstm_forward(a["input_gates"], a["w_hh"], a["b_hh"], None, a["h0"], a["c0"],
                           torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="lengths must be a CPU tensor"):
        o.ops.lstm_forward(a["input_gates"], a["w_hh"], a["b_hh"], None, a["h0"], a["c0"],
                           torch.tensor([1, 2], device="meta"))


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        functional.lstm(**lstm_args(), backend="cudnn")


def test_backend_that_cannot_serve_says_why():
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run"):
        functional.lstm(**lstm_args(), backend="cuda")


@pytest.mark.parametrize("backend", cpu_backends())
def test_backward_shape_errors(backend):
    import rnn_ext._ops as o

    a = lstm_args()
    y, hn, cn, ws, p = o.ops.lstm_forward(a["input_gates"], a["w_hh"], a["b_hh"], None, a["h0"], a["c0"], None)
    with pytest.raises(RuntimeError, match="grad_output"):
        o.ops.lstm_backward(torch.randn(T, B, H + 1), hn, cn, a["w_hh"], None, a["h0"], a["c0"],
                            y, ws, p, None, None)


@pytest.mark.parametrize("backend", cpu_backends())
def test_empty_batch_and_hidden_size_zero_give_empty_results(backend):
    """nn returns empty outputs for B = 0 (and hidden size 0 cells); so do the
    ops, still attached to the graph."""
    gx = torch.randn(T, 0, 4 * H, requires_grad=True)
    y, hn, cn, ws = functional.lstm(gx, torch.randn(4 * H, H), torch.randn(4 * H), backend=backend)
    assert y.shape == (T, 0, H) and hn.shape == cn.shape == (0, H) and ws.shape == (T, 0, 5 * H)
    y.sum().backward()
    assert gx.grad.shape == gx.shape
    gx = torch.randn(1, B, 0, requires_grad=True)
    y, hn, ws = functional.gru(gx, torch.randn(0, 0), None, torch.randn(B, 0), backend=backend)
    assert y.shape == (1, B, 0) and hn.shape == (B, 0)


def test_jit_trace_of_the_reference_backend_is_refused():
    """The reference backend is a Python loop: a trace would fix the length."""
    import rnn_ext

    m = rnn_ext.GRU(3, 4, backend="reference")
    with pytest.raises(RuntimeError, match="cannot be traced"):
        torch.jit.trace(m, torch.randn(5, 2, 3))


def test_jit_trace_of_the_cpu_backend_follows_the_length():
    import rnn_ext

    m = rnn_ext.LSTM(3, 4, backend="cpu")
    traced = torch.jit.trace(m, torch.randn(5, 2, 3), check_trace=False)
    x = torch.randn(8, 2, 3)
    torch.testing.assert_close(traced(x)[0], m(x)[0])
