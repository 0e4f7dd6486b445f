"""CUDA backend (marked `cuda`: skipped without a GPU).  Parity with
nn.LSTM / nn.GRU / nn.RNN on cuDNN and with the reference in all four dtypes,
gradcheck and opcheck on CUDA, a sweep of random shapes, and CUDA graph
capture of forward and backward.  Poisoned outputs: tests/test_poison.py."""
import pytest
import torch

from _utils import make_inputs, make_module, outputs_and_grads, run_ops, run_torch, tf32 as tf32_switch
from rnn_ext import functional

pytestmark = pytest.mark.cuda

LOW = (torch.float16, torch.bfloat16)


def _errors(kind, module, x, h0, c0, lengths, run, dtype, tf32=False):
    """Max abs error of outputs and gradients of `run` at `dtype` against an
    fp64 run of the same weights."""
    exact = make_module(kind, module.input_size, module.hidden_size,
                        getattr(module, "proj_size", 0), module.bias, torch.float64, "cuda")
    exact.load_state_dict(module.state_dict())
    args64 = [t.detach().double().requires_grad_() if t is not None else None for t in (x, h0, c0)]
    want_o, want_g = outputs_and_grads(run_torch(kind, exact, *args64, lengths),
                                       [a for a in args64 if a is not None] + list(exact.parameters()))
    m = make_module(kind, module.input_size, module.hidden_size, getattr(module, "proj_size", 0),
                    module.bias, dtype, "cuda")
    m.load_state_dict(module.state_dict())
    args = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in (x, h0, c0)]
    with tf32_switch(tf32):
        got_o, got_g = outputs_and_grads(run(kind, m, *args, lengths),
                                         [a for a in args if a is not None] + list(m.parameters()))
    return [(g.double() - w).abs().max().item() for g, w in zip(got_o + got_g, want_o + want_g)], \
           [w.abs().max().item() for w in want_o + want_g]


CASES = [  # T, B, I, H, P, bias, lengths
    (7, 3, 5, 11, 0, True, None),
    (6, 4, 9, 16, 0, False, None),
    (5, 3, 4, 16, 8, True, None),
    (6, 4, 3, 32, 0, True, [6, 4, 4, 1]),
    (6, 4, 3, 8, 0, True, [2, 6, 1, 5]),
    (1, 1, 3, 5, 0, True, None),
]


def _kind_cases():
    return [(k, c) for k in ("lstm", "gru", "rnn_tanh", "rnn_relu") for c in CASES if k == "lstm" or not c[4]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind,case", _kind_cases(), ids=str)
def test_parity_with_cudnn(kind, case, dtype):
    T, B, I, H, P, bias, lengths = case
    module = make_module(kind, I, H, P, bias, torch.float64, "cuda")
    x, h0, c0 = make_inputs(kind, module, T, B, torch.float64, "cuda")
    L = torch.tensor(lengths) if lengths else None
    ours, scale = _errors(kind, module, x, h0, c0, L,
                          lambda *a: run_ops(*a, backend="cuda"), dtype)
    if dtype == torch.float64:
        assert max(e / max(s, 1) for e, s in zip(ours, scale)) <= 1e-10
    elif dtype == torch.float32:
        assert max(e / max(s, 1) for e, s in zip(ours, scale)) <= 1e-5  # TF32 off
    else:
        cudnn, _ = _errors(kind, module, x, h0, c0, L, run_torch, dtype)
        for k, (e, c) in enumerate(zip(ours, cudnn)):
            assert e <= 2 * c + 2e-3, f"result {k}: error {e:.3g} vs cuDNN's {c:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_with_reference_on_cuda(dtype):
    module = make_module("lstm", 5, 12, 4, True, dtype, "cuda")
    x, h0, c0 = make_inputs("lstm", module, 6, 3, dtype, "cuda")
    L = torch.tensor([6, 2, 4])
    wrt = [x, h0, c0] + list(module.parameters())
    a_o, a_g = outputs_and_grads(run_ops("lstm", module, x, h0, c0, L, "cuda"), wrt)
    b_o, b_g = outputs_and_grads(run_ops("lstm", module, x, h0, c0, L, "reference"), wrt)
    for a, b in zip(a_o + a_g, b_o + b_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("proj", [False, True])
def test_gradcheck_and_opcheck_on_cuda(proj):
    T, B, H, P = 4, 3, 5, 2
    r = lambda *s: torch.randn(*s, dtype=torch.float64, device="cuda", requires_grad=True)  # noqa: E731
    hout = P if proj else H
    args = (r(T, B, 4 * H), r(4 * H, hout), r(4 * H), r(P, H) if proj else None, r(B, hout), r(B, H))
    L = torch.tensor([4, 1, 3])
    present = [a for a in args if a is not None]

    def f(*a):
        a = list(a)
        if not proj:
            a.insert(3, None)
        return functional.lstm(*a, lengths=L, backend="cuda")

    assert torch.autograd.gradcheck(f, present)
    torch.library.opcheck(torch.ops.rnn_ext.lstm_forward, args + (L,))
    g_args = (r(T, B, 3 * H), r(3 * H, H), r(3 * H), r(B, H))
    assert torch.autograd.gradcheck(lambda *a: functional.gru(*a, lengths=L, backend="cuda"), g_args)
    torch.library.opcheck(torch.ops.rnn_ext.gru_forward, g_args + (L,))
    r_args = (r(T, B, H), r(H, H), r(H), r(B, H))
    for nl in ("tanh", "relu"):
        assert torch.autograd.gradcheck(
            lambda *a: functional.rnn(*a, lengths=L, nonlinearity=nl, backend="cuda"), r_args)
        torch.library.opcheck(torch.ops.rnn_ext.rnn_forward, r_args + (L, nl))


@pytest.mark.parametrize("seed", range(12))
def test_random_shapes(seed):
    g = torch.Generator().manual_seed(seed)
    pick = lambda *c: c[torch.randint(len(c), (1,), generator=g).item()]  # noqa: E731
    kind = pick("lstm", "gru", "rnn_tanh", "rnn_relu")
    T, B, I = pick(1, 2, 17, 64), pick(1, 3, 33, 128), pick(1, 7, 64)
    H = pick(1, 13, 256, 1024, 1031)
    P = pick(0, 0, max(1, H // 3)) if kind == "lstm" and H > 1 else 0
    lengths = torch.randint(0, T + 1, (B,), generator=g) if pick(True, False) else None
    module = make_module(kind, I, H, P, True, torch.float32, "cuda")
    x, h0, c0 = make_inputs(kind, module, T, B, torch.float32, "cuda")
    wrt = [x, h0] + ([c0] if c0 is not None else []) + list(module.parameters())
    a_o, a_g = outputs_and_grads(run_ops(kind, module, x, h0, c0, lengths, "cuda"), wrt)
    b_o, b_g = outputs_and_grads(run_ops(kind, module, x, h0, c0, lengths, "reference"), wrt)
    for a, b in zip(a_o + a_g, b_o + b_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_cuda_graph_capture_of_forward_and_backward(kind):
    T, B, H = 8, 4, 32
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    r = lambda *s: torch.randn(*s, device="cuda", requires_grad=True)  # noqa: E731
    gx, w, b, h0 = r(T, B, G * H), r(G * H, H), r(G * H), r(B, H)
    c0 = r(B, H)

    def step():
        if kind == "lstm":
            y, hn, cn, _ = functional.lstm(gx, w, b, None, h0, c0, backend="cuda")
            loss = y.square().sum() + hn.sum() + cn.sum()
        elif kind == "rnn":
            y, hn, _ = functional.rnn(gx, w, b, h0, nonlinearity="tanh", backend="cuda")
            loss = y.square().sum() + hn.sum()
        else:
            y, hn, _ = functional.gru(gx, w, b, h0, backend="cuda")
            loss = y.square().sum() + hn.sum()
        return loss, torch.autograd.grad(loss, [gx, w, b, h0])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss, static_grads = step()
    with torch.no_grad():
        for t in (gx, w, b, h0, c0):
            t.copy_(torch.randn_like(t))
    graph.replay()
    want_loss, want_grads = step()
    torch.testing.assert_close(static_loss, want_loss)
    for a, b_ in zip(static_grads, want_grads):
        torch.testing.assert_close(a, b_)
