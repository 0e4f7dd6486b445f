"""A layer direction in one call (rnn_ext/_layer.py): which calls of the
modules take it; as one autograd node, its values and gradients against
torch.nn in fp64, gradcheck and gradgradcheck, and fp32 through oneDNN
against fp64; without a gradient, the inference kernel."""
import copy

import pytest
import torch

import rnn_ext
from rnn_ext import _layer, _projection

from _utils import TOL, make_module, rnn_ext_op_names
from test_projection import ALL_ONEDNN, GRAD_MKL, SHORT, needs_onednn

CONFIGS = [
    ("lstm", {}),
    ("lstm", dict(num_layers=2, bidirectional=True, proj_size=3)),
    ("lstm", dict(batch_first=True, bias=False)),
    ("gru", dict(num_layers=2, bidirectional=True)),
    ("rnn_tanh", dict(batch_first=True)),
    ("rnn_relu", dict(bidirectional=True, bias=False)),
]


def _pair(kind, dtype=torch.float64, I=5, H=6, **kw):
    torch.manual_seed(0)
    nn_module = make_module(kind, I, H, dtype=dtype, **kw)
    return nn_module, rnn_ext.convert(copy.deepcopy(nn_module), backend="cpu")


def _inputs(module, T=7, B=3, dtype=torch.float64, with_state=True):
    g = torch.Generator().manual_seed(1)
    shape = (B, T, module.input_size) if module.batch_first else (T, B, module.input_size)
    x = torch.randn(shape, generator=g, dtype=dtype, requires_grad=True)
    if not with_state:
        return x, None
    LD = module.num_layers * (2 if module.bidirectional else 1)
    hout = module.proj_size or module.hidden_size
    h0 = torch.randn(LD, B, hout, generator=g, dtype=dtype, requires_grad=True)
    if isinstance(module, (torch.nn.LSTM, rnn_ext.LSTM)):
        c0 = torch.randn(LD, B, module.hidden_size, generator=g, dtype=dtype, requires_grad=True)
        return x, (h0, c0)
    return x, h0


@pytest.fixture
def layer_calls(monkeypatch):
    calls = []
    real = _layer.layer
    monkeypatch.setattr(_layer, "layer", lambda *a: calls.append(a[0]) or real(*a))
    return calls


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("kind,kw", CONFIGS, ids=lambda c: str(c))
@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
def test_values_and_gradients_match_nn_fp64(kind, kw, with_state, layer_calls):
    nn_module, module = _pair(kind, **kw)
    x, hx = _inputs(module, with_state=with_state)
    y, state = module(x, hx)
    assert len(layer_calls) == module.num_layers * (2 if module.bidirectional else 1)
    y_nn, state_nn = nn_module(x, hx)
    for a, b in zip([y, *_flat(state)], [y_nn, *_flat(state_nn)]):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    g = torch.Generator().manual_seed(2)
    outs, outs_nn = [y, *_flat(state)], [y_nn, *_flat(state_nn)]
    grads_out = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
    wrt = [x, *(_flat(hx) if with_state else [])]
    got = torch.autograd.grad(outs, wrt + list(module.parameters()), grads_out)
    want = torch.autograd.grad(outs_nn, wrt + list(nn_module.parameters()), grads_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("kind,kw", CONFIGS, ids=lambda c: str(c))
def test_gradcheck_and_gradgradcheck(kind, kw, layer_calls):
    _, module = _pair(kind, I=3, H=4, **kw)
    x, hx = _inputs(module, T=3, B=2)
    states = _flat(hx)
    names = [n for n, _ in module.named_parameters()]

    def run(x, *tensors):
        state = tuple(tensors[:len(states)])
        params = dict(zip(names, tensors[len(states):]))
        y, out = torch.func.functional_call(
            module, params, (x, state if len(state) > 1 else state[0]))
        return (y, *_flat(out))

    params = tuple(module.parameters())
    assert torch.autograd.gradcheck(run, (x, *states, *params))
    # Double backward (the reference's formulas) with respect to the input
    # and states; every weight in it took 10 s for the two-layer cases.
    assert torch.autograd.gradgradcheck(lambda *a: run(*a, *params), (x, *states))
    assert layer_calls


@needs_onednn
@pytest.mark.parametrize("rule", [ALL_ONEDNN, GRAD_MKL, SHORT], ids=["all-onednn", "grad-mkl", "short"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_fp32_through_onednn_matches_fp64(kind, rule, monkeypatch, layer_calls):
    """fp32 whose projection runs through oneDNN (the test rules put these
    sizes on oneDNN's side): within fp32 tolerance of the fp64 module."""
    monkeypatch.setattr(_projection, "RULE", rule)
    ref, _ = _pair(kind, I=7, H=12)
    module = rnn_ext.convert(copy.deepcopy(ref), backend="cpu").float()
    x64, _ = _inputs(ref, T=16, B=17, with_state=False)
    x32 = x64.detach().float().requires_grad_()
    y32, _ = module(x32)
    y64, _ = ref(x64)
    assert layer_calls
    torch.testing.assert_close(y32, y64.float(), **TOL[torch.float32])
    dy = torch.randn(y64.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad(y32, [x32, *module.parameters()], dy.float())
    want = torch.autograd.grad(y64, [x64, *ref.parameters()], dy)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-4)


def test_bias_gradients_are_separate_tensors():
    """LSTM's b_ih and b_hh get one sum: autograd must not give both .grad
    the same storage (an in-place update of one would change the other)."""
    _, module = _pair("lstm")
    x, _ = _inputs(module, with_state=False)
    module(x)[0].sum().backward()
    b_ih, b_hh = module.bias_ih_l0.grad, module.bias_hh_l0.grad
    torch.testing.assert_close(b_ih, b_hh)
    assert b_ih.untyped_storage().data_ptr() != b_hh.untyped_storage().data_ptr()


def _op_names(fn):
    """(fn(), the sequence ops it ran: the projection may call
    rnn_ext::short_linear)."""
    out, names = rnn_ext_op_names(fn)
    return out, {n for n in names if n.endswith(("_infer", "_forward"))}


@pytest.mark.parametrize("case", ["no_grad", "frozen"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_without_gradient_runs_the_inference_kernel(kind, case, layer_calls):
    """With nothing to record (no_grad, or no input or weight requiring
    grad) the layer runs the projection and the inference op, which keeps
    no workspace; the results match torch.nn."""
    nn_module, module = _pair(kind, dtype=torch.float32, num_layers=2, bidirectional=True)
    x, _ = _inputs(module, dtype=torch.float32, with_state=False)
    x = x.detach()
    if case == "frozen":
        for p in module.parameters():
            p.requires_grad_(False)
        (y, _), names = _op_names(lambda: module(x))
    else:
        with torch.no_grad():
            (y, _), names = _op_names(lambda: module(x))
    assert len(layer_calls) == 4
    assert names == {f"rnn_ext::{kind[:4].rstrip('_')}_infer"}, names
    assert not y.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(y, nn_module(x)[0], **TOL[torch.float32])


@pytest.mark.parametrize("case", ["internals", "packed", "autocast", "reference-backend"])
def test_other_calls_keep_two_calls(case, layer_calls):
    """With internals, packed input, autocast or another backend, the
    projection and the sequence op stay separate calls through the
    functional API; the results still match torch.nn."""
    nn_module, module = _pair("lstm", dtype=torch.float32)
    x, _ = _inputs(module, dtype=torch.float32, with_state=False)
    if case == "reference-backend":
        module.backend = "reference"
    with torch.no_grad():
        y_nn, _ = nn_module(x)
    if case == "internals":
        y, _, _ = module.forward_with_internals(x)
    elif case == "packed":
        lengths = torch.tensor([7, 5, 2])
        y_packed, _ = module(torch.nn.utils.rnn.pack_padded_sequence(x, lengths))
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y_packed, total_length=x.size(0))
        y_nn = torch.nn.utils.rnn.pad_packed_sequence(
            nn_module(torch.nn.utils.rnn.pack_padded_sequence(x, lengths))[0],
            total_length=x.size(0))[0]
    elif case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = module(x)
        y_nn = y_nn.to(y.dtype)
    else:
        y, _ = module(x)
    assert layer_calls == []
    tol = dict(rtol=2e-2, atol=2e-2) if case == "autocast" else TOL[torch.float32]
    torch.testing.assert_close(y, y_nn.detach(), **tol)
