"""The layers' input projection (rnn_ext/_projection.py): oneDNN's matmul on
the CPU in fp32, F.linear everywhere else; values and gradients against an
fp64 reference."""
import pytest
import torch
import torch.nn.functional as F

from rnn_ext import _projection

needs_onednn = pytest.mark.skipif(not _projection._ONEDNN, reason="PyTorch built without oneDNN")


def _case(bias, transposed, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    T, B = 16, 17  # T x B rows >= MIN_ROWS: the oneDNN side of the rule
    x = torch.randn(T, B, 7, generator=g, dtype=dtype)
    if transposed:  # batch_first input as the modules see it: a [T, B, I] view
        x = torch.randn(B, T, 7, generator=g, dtype=dtype).transpose(0, 1)
    w = torch.randn(12, 7, generator=g, dtype=dtype)
    b = torch.randn(12, generator=g, dtype=dtype) if bias else None
    return x, w, b


@needs_onednn
def test_cpu_fp32_takes_onednn(monkeypatch):
    calls = []
    real = _projection._onednn_linear
    monkeypatch.setattr(_projection, "_onednn_linear", lambda *a: calls.append(1) or real(*a))
    x, w, b = _case(True, False)
    _projection.input_projection(x, w, b)
    assert calls, "the CPU fp32 projection did not go through oneDNN"
    calls.clear()
    with torch.backends.mkldnn.flags(enabled=False):
        _projection.input_projection(x, w, b)
    assert not calls, "torch.backends.mkldnn.enabled=False must be respected"
    _projection.input_projection(x.double(), w.double(), b.double())
    assert not calls, "only fp32 goes through oneDNN"
    _projection.input_projection(x[:2], w, b)
    assert 2 * x.size(1) < _projection.MIN_ROWS and not calls, \
        "a product of fewer than MIN_ROWS rows stays with MKL"


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, True)],
                         ids=["all", "x", "weights"])
def test_values_and_gradients_match_fp64(bias, transposed, needs):
    x, w, b = _case(bias, transposed)
    leaves = [x, w, b]
    for t, n in zip(leaves, needs):
        if t is not None:
            t.requires_grad_(n)
    y = _projection.input_projection(x, w, b)
    exact = [None if t is None else t.detach().double().requires_grad_(t.requires_grad)
             for t in leaves]
    y_ref = F.linear(*exact)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref.backward(dy.double())
    for got, want in zip(leaves, exact):
        if got is None or not got.requires_grad:
            assert got is None or got.grad is None
            continue
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_no_grad_builds_no_graph():
    x, w, b = _case(True, False)
    w.requires_grad_()
    with torch.no_grad():
        y = _projection.input_projection(x, w, b)
    assert y.grad_fn is None and not y.requires_grad


def test_fp64_gradcheck_through_the_same_entry_point():
    x, w, b = (t[:3].requires_grad_() if t.dim() == 3 else t.requires_grad_()
               for t in _case(True, True, torch.float64))
    assert torch.autograd.gradcheck(_projection.input_projection, (x, w, b))
