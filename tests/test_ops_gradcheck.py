"""fp64 gradcheck of each sequence op (through its registered autograd),
including the gradient of the workspace (the per-step gates and cell
states), and gradgradcheck of the double-backward path."""
import pytest
import torch

from _utils import cpu_backends
from rnn_ext import functional

T, B, H, P = 4, 3, 5, 2
LENGTHS = {"full": None, "sorted": [4, 2, 0], "unsorted": [2, 4, 3]}


def _fast(backend):
    """The Triton interpreter runs a kernel launch in tens of milliseconds:
    the full Jacobian (two forward passes per input element) would take
    minutes per test, so backend "triton" checks random projections of it
    (fast_mode, which fails on any wrong entry with probability 1)."""
    return backend == "triton"


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def lstm_inputs(proj):
    hout = P if proj else H
    return (_rand(T, B, 4 * H), _rand(4 * H, hout), _rand(4 * H),
            _rand(P, H) if proj else None, _rand(B, hout), _rand(B, H))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
def test_lstm_gradcheck(proj, lengths, backend):
    gx, w_hh, b_hh, w_hr, h0, c0 = lstm_inputs(proj)
    L = LENGTHS[lengths]
    args = [a for a in (gx, w_hh, b_hh, w_hr, h0, c0) if a is not None]

    def f(*a):
        a = list(a)
        w_hr_ = a.pop(3) if proj else None
        return functional.lstm(a[0], a[1], a[2], w_hr_, a[3], a[4], lengths=L, backend=backend)

    assert torch.autograd.gradcheck(f, args, fast_mode=_fast(backend))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("lengths", list(LENGTHS))
def test_gru_gradcheck(lengths, backend):
    args = (_rand(T, B, 3 * H), _rand(3 * H, H), _rand(3 * H), _rand(B, H))
    L = LENGTHS[lengths]
    assert torch.autograd.gradcheck(
        lambda *a: functional.gru(*a, lengths=L, backend=backend), args, fast_mode=_fast(backend))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_gradcheck(nonlinearity, lengths, backend):
    args = (_rand(T, B, H), _rand(H, H), _rand(H), _rand(B, H))
    L = LENGTHS[lengths]
    assert torch.autograd.gradcheck(
        lambda *a: functional.rnn(*a, lengths=L, nonlinearity=nonlinearity, backend=backend), args,
        fast_mode=_fast(backend))


@pytest.mark.parametrize("backend", cpu_backends())
def test_no_bias_gradcheck(backend):
    gx, w_hh, _, _, h0, c0 = lstm_inputs(False)
    assert torch.autograd.gradcheck(
        lambda *a: functional.lstm(a[0], a[1], None, None, a[2], a[3], backend=backend),
        (gx, w_hh, h0, c0), fast_mode=_fast(backend))
    args = (_rand(T, B, 3 * H), _rand(3 * H, H), _rand(B, H))
    assert torch.autograd.gradcheck(
        lambda g, w, h: functional.gru(g, w, None, h, backend=backend), args, fast_mode=_fast(backend))
    args = (_rand(T, B, H), _rand(H, H), _rand(B, H))
    assert torch.autograd.gradcheck(
        lambda g, w, h: functional.rnn(g, w, None, h, backend=backend), args, fast_mode=_fast(backend))


@pytest.mark.parametrize("backend", cpu_backends())
def test_double_backward(backend):
    gx, w_hh, b_hh, w_hr, h0, c0 = lstm_inputs(True)
    L = LENGTHS["unsorted"]
    assert torch.autograd.gradgradcheck(
        lambda *a: functional.lstm(*a, lengths=L, backend=backend)[:3],
        (gx, w_hh, b_hh, w_hr, h0, c0), fast_mode=_fast(backend))
    args = (_rand(T, B, 3 * H), _rand(3 * H, H), _rand(3 * H), _rand(B, H))
    assert torch.autograd.gradgradcheck(
        lambda *a: functional.gru(*a, lengths=L, backend=backend)[:2], args, fast_mode=_fast(backend))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_double_backward(nonlinearity, backend):
    """Smaller than the LSTM/GRU case and with random projections
    (fast_mode): the full second-order Jacobian is slow and adds nothing."""
    L = [3, 0]
    args = (_rand(3, 2, 3), _rand(3, 3), _rand(3), _rand(2, 3))
    assert torch.autograd.gradgradcheck(
        lambda *a: functional.rnn(*a, lengths=L, nonlinearity=nonlinearity, backend=backend),
        args, fast_mode=True)
