"""Sequences of 100,000 steps, which cuDNN refuses past 65,535
(pytorch#133751): one call over the whole sequence matches the same
sequence run in chunks with the state carried from chunk to chunk, in the
outputs, the final states and every gradient (in fp64 on the CPU: a weight
gradient is a sum over 100k steps, which fp32 rounds visibly and which
other lengths block differently); and the LSTM matches torch.nn.  Small sizes, so a
pass is a fraction of a second on the CPU."""
import pytest
import torch

import rnn_ext

T_LONG = 100_000
CHUNKS = 4
CELLS = ["lstm", "gru", "rnn"]


def _modules(cell, backend, device, dtype):
    torch.manual_seed(0)
    cls = {"lstm": rnn_ext.LSTM, "gru": rnn_ext.GRU, "rnn": rnn_ext.RNN}[cell]
    m = cls(3, 5, backend=backend).to(device, dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.5)  # a contracting recurrence: no blow-up over 100k steps
    return m


def _run(m, x, chunks):
    """(output, final state(s)) of x in `chunks` calls, the state carried."""
    state, outs = None, []
    for piece in x.chunk(chunks):
        y, state = m(piece, state)
        outs.append(y)
    states = state if isinstance(state, tuple) else (state,)
    return torch.cat(outs), states


def _close(got, want, tol):
    """Within tol of want's largest magnitude (a sum over 100k steps can
    cancel to a small element whose own relative error says little)."""
    scale = want.abs().max().item() or 1.0
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol * scale, f"max error {err:.3g} against a largest value {scale:.3g}"


def _check_long(cell, backend, device, dtype, tol):
    m = _modules(cell, backend, device, dtype)
    x = torch.randn(T_LONG, 2, 3, device=device, dtype=dtype).requires_grad_()
    results = []
    for chunks in (1, CHUNKS):
        for p in m.parameters():
            p.grad = None
        x.grad = None
        y, states = _run(m, x, chunks)
        seed = torch.Generator(device="cpu").manual_seed(1)
        loss = (y * torch.randn(y.shape, generator=seed).to(device, dtype)).sum() + sum(s.sum() for s in states)
        loss.backward()
        grads = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
        results.append([y.detach(), *[s.detach() for s in states], *grads])
    for whole, chunked in zip(*results):
        assert torch.isfinite(whole).all()
        _close(chunked, whole, tol)
    return m, x, results[0]


@pytest.mark.parametrize("cell", CELLS)
def test_cpu_sequence_of_100k_steps(cell):
    m, x, (y, *rest) = _check_long(cell, "cpu", "cpu", torch.float64, 1e-9)
    if cell == "lstm":  # torch.nn's CPU LSTM in fp32 (oneDNN) takes 100k steps quickly
        nn_m = rnn_ext.to_torch(m).float()
        with torch.no_grad():
            y_nn, (h_nn, c_nn) = nn_m(x.detach().float())
        _close(y_nn, y, 1e-5)
        _close(h_nn, rest[0], 1e-5)
        _close(c_nn, rest[1], 1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("variant", ["cuda", "cuda:persistent", "triton"])
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_sequence_of_100k_steps(cell, variant, monkeypatch):
    # On the GPU too, and against the CPU backend's result.
    backend, _, persistent = variant.partition(":")
    if persistent:
        monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", "force")
    torch.backends.cuda.matmul.allow_tf32 = False
    _, _, got = _check_long(cell, backend, "cuda", torch.float32, 1e-3)
    monkeypatch.delenv("RNN_EXT_CUDA_PERSISTENT", raising=False)
    _, _, want = _check_long(cell, "cpu", "cpu", torch.float64, 1e-9)
    for g, w in zip(got, want):
        _close(g.cpu(), w, 1e-3)
