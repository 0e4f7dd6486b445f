"""Shared test helpers: running one nn.LSTM / nn.GRU / nn.RNN layer through
torch.nn and through the rnn_ext sequence ops with the same weights, and
comparing outputs and gradients.

A `kind` is "lstm", "gru", or "rnn_tanh" / "rnn_relu" (nn.RNN with that
nonlinearity)."""
import contextlib

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnn_ext
from rnn_ext import functional

# Tolerances: fp64 tight; fp32 reflects reordered sums over H terms.
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=2e-5)}


@contextlib.contextmanager
def tf32(enabled):
    """TF32 for fp32 products, on both sides of a comparison with torch.nn:
    cuBLAS (which the Triton kernels follow: _sequence._precision) and cuDNN,
    whose RNNs use TF32 for fp32 by default (about 1e-3 relative error, far
    above the fp32 tolerances here).  Restores both switches on exit.
    conftest.py turns TF32 off around every test."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    # cudnn.flags(), not the attribute: PyTorch's own test utilities (the
    # ModuleInfo tests import them) forbid setting cuDNN flags directly.
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled,
                                        benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic,
                                        allow_tf32=enabled):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def cpu_backends():
    """Every backend that can run on the CPU in the test suite."""
    names = ["cpu", "reference"]
    if rnn_ext.backends.why_not("triton", torch.device("cpu"), torch.float32) is None:
        names.append("triton")
    return names


RNN_KINDS = ("rnn_tanh", "rnn_relu")
KINDS = ("lstm", "gru") + RNN_KINDS


def nonlinearity(kind):
    """"tanh" or "relu" for an RNN kind, else None."""
    return kind[len("rnn_"):] if kind in RNN_KINDS else None


def make_module(kind, input_size, hidden_size, proj_size=0, bias=True,
                dtype=torch.float64, device="cpu", **kw):
    """The torch.nn module of a kind; kw: nn's other arguments (num_layers,
    bidirectional, batch_first)."""
    if kind == "lstm":
        m = torch.nn.LSTM(input_size, hidden_size, bias=bias, proj_size=proj_size, **kw)
    elif kind in RNN_KINDS:
        m = torch.nn.RNN(input_size, hidden_size, bias=bias, nonlinearity=nonlinearity(kind), **kw)
    else:
        m = torch.nn.GRU(input_size, hidden_size, bias=bias, **kw)
    return m.to(device=device, dtype=dtype)


def rnn_ext_op_names(fn):
    """(fn(), the names of the rnn_ext ops it ran), from the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, {e.name for e in prof.events() if e.name.startswith("rnn_ext::")}


def make_inputs(kind, module, T, B, dtype, device="cpu"):
    H = module.hidden_size
    hout = module.proj_size if kind == "lstm" and module.proj_size > 0 else H
    x = torch.randn(T, B, module.input_size, dtype=dtype, device=device, requires_grad=True)
    h0 = torch.randn(B, hout, dtype=dtype, device=device, requires_grad=True)
    c0 = torch.randn(B, H, dtype=dtype, device=device, requires_grad=True) if kind == "lstm" else None
    return x, h0, c0


def run_torch(kind, module, x, h0, c0, lengths=None):
    """Outputs of the nn module: (output padded with zeros, h_n, c_n)."""
    T = x.shape[0]
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    state = (h0[None], c0[None]) if kind == "lstm" else h0[None]
    out, hn = module(inp, state)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=T)
    if kind == "lstm":
        return out, hn[0][0], hn[1][0]
    return out, hn[0], None


def run_ops(kind, module, x, h0, c0, lengths=None, backend="auto"):
    """The same layer through rnn_ext.functional: (output, h_n, c_n)."""
    b_ih = module.bias_ih_l0 if module.bias else None
    b_hh = module.bias_hh_l0 if module.bias else None
    gx = torch.nn.functional.linear(x, module.weight_ih_l0, b_ih)
    if kind == "lstm":
        w_hr = module.weight_hr_l0 if module.proj_size > 0 else None
        y, hn, cn, _ = functional.lstm(gx, module.weight_hh_l0, b_hh, w_hr, h0, c0,
                                       lengths=lengths, backend=backend)
        return y, hn, cn
    if kind in RNN_KINDS:
        y, hn, _ = functional.rnn(gx, module.weight_hh_l0, b_hh, h0, lengths=lengths,
                                  nonlinearity=nonlinearity(kind), backend=backend)
        return y, hn, None
    y, hn, _ = functional.gru(gx, module.weight_hh_l0, b_hh, h0, lengths=lengths,
                              backend=backend)
    return y, hn, None


def outputs_and_grads(outputs, wrt, seed=1):
    """A random linear function of the outputs, and its gradients."""
    gen = torch.Generator().manual_seed(seed)
    outputs = [o for o in outputs if o is not None]
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64)
                .to(o.device, o.dtype)).sum() for o in outputs)
    grads = torch.autograd.grad(loss, wrt)
    return [o.detach() for o in outputs], list(grads)


def assert_all_close(got, want, dtype, names=None):
    tol = TOL[dtype]
    for k, (g, w) in enumerate(zip(got, want)):
        name = names[k] if names else str(k)
        torch.testing.assert_close(g, w, **tol, msg=lambda m: f"{name}: {m}")
