"""torch.library.opcheck on each compiled op: schema, fake (meta)
implementation, autograd registration and AOT dispatch."""
import pytest
import torch

import rnn_ext  # noqa: F401

ops = torch.ops.rnn_ext
T, B, H, P = 3, 2, 4, 3


def _t(*shape, grad=False):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
@pytest.mark.parametrize("lengths", [None, [3, 1]], ids=["full", "lengths"])
def test_lstm_ops(proj, lengths, grad):
    hout = P if proj else H
    L = torch.tensor(lengths) if lengths else None
    fwd_args = (_t(T, B, 4 * H, grad=grad), _t(4 * H, hout, grad=grad), _t(4 * H, grad=grad),
                _t(P, H, grad=grad) if proj else None, _t(B, hout, grad=grad), _t(B, H, grad=grad), L)
    torch.library.opcheck(ops.lstm_forward, fwd_args)
    if not grad:  # the inference op has no autograd: it is called without gradients only
        torch.library.opcheck(ops.lstm_infer, fwd_args)
    with torch.no_grad():
        y, hn, cn, ws, proj_in = ops.lstm_forward(*fwd_args)
    bwd_args = (torch.randn_like(y), torch.randn_like(hn), torch.randn_like(cn), fwd_args[1].detach(),
                fwd_args[3].detach() if proj else None, fwd_args[4].detach(), fwd_args[5].detach(),
                y, ws, proj_in, L, torch.randn_like(ws))
    torch.library.opcheck(ops.lstm_backward, bwd_args)


@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("lengths", [None, [1, 3]], ids=["full", "lengths"])
def test_gru_ops(lengths, grad):
    L = torch.tensor(lengths) if lengths else None
    fwd_args = (_t(T, B, 3 * H, grad=grad), _t(3 * H, H, grad=grad), _t(3 * H, grad=grad),
                _t(B, H, grad=grad), L)
    torch.library.opcheck(ops.gru_forward, fwd_args)
    if not grad:
        torch.library.opcheck(ops.gru_infer, fwd_args)
    with torch.no_grad():
        y, hn, ws = ops.gru_forward(*fwd_args)
    bwd_args = (torch.randn_like(y), torch.randn_like(hn), fwd_args[1].detach(), fwd_args[3].detach(),
                y, ws, L, None)
    torch.library.opcheck(ops.gru_backward, bwd_args)


@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("lengths", [None, [1, 3]], ids=["full", "lengths"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_ops(nonlinearity, lengths, grad):
    L = torch.tensor(lengths) if lengths else None
    fwd_args = (_t(T, B, H, grad=grad), _t(H, H, grad=grad), _t(H, grad=grad), _t(B, H, grad=grad), L,
                nonlinearity)
    torch.library.opcheck(ops.rnn_forward, fwd_args)
    with torch.no_grad():
        y, hn, ws = ops.rnn_forward(*fwd_args)
    bwd_args = (torch.randn_like(y), torch.randn_like(hn), fwd_args[1].detach(), fwd_args[3].detach(),
                y, ws, L, torch.randn_like(ws), nonlinearity)
    torch.library.opcheck(ops.rnn_backward, bwd_args)
