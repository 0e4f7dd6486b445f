"""Every element of every output and gradient is written by the kernels:
run with NaN-poisoned allocations and compare with an unpoisoned run."""
import pytest
import torch

from _poison import poisoned_allocations
from _utils import cpu_backends
from rnn_ext import functional

CASES = [  # T, B, H, P, lengths
    (5, 3, 7, 0, None),
    (5, 3, 7, 3, None),
    (5, 4, 6, 0, [5, 3, 3, 0]),   # sorted: the GEMMs shrink
    (5, 4, 6, 2, [2, 5, 0, 4]),   # unsorted, projection
    (1, 1, 3, 0, None),
]


def _run(kind, case, backend, device):
    T, B, H, P, lengths = case
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_()  # noqa: E731
    L = torch.tensor(lengths) if lengths else None
    if kind == "lstm":
        hout = P or H
        inputs = [r(T, B, 4 * H), r(4 * H, hout), r(4 * H), r(P, H) if P else None, r(B, hout), r(B, H)]
        outs = functional.lstm(*inputs, lengths=L, backend=backend)
    elif kind == "gru":
        inputs = [r(T, B, 3 * H), r(3 * H, H), r(3 * H), r(B, H)]
        outs = functional.gru(*inputs, lengths=L, backend=backend)
    else:
        inputs = [r(T, B, H), r(H, H), r(H), r(B, H)]
        outs = functional.rnn(*inputs, lengths=L, nonlinearity=kind[len("rnn_"):], backend=backend)
    wrt = [t for t in inputs if t is not None]
    weights = [torch.randn(o.shape, generator=g, dtype=o.dtype).to(device) for o in outs]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)), wrt)
    return [o.detach() for o in outs] + list(grads)


def check(kind, case, backend, device):
    clean = _run(kind, case, backend, device)
    with poisoned_allocations():
        poisoned = _run(kind, case, backend, device)
    for k, (p, c) in enumerate(zip(poisoned, clean)):
        assert not torch.isnan(p).any(), f"result {k} has unwritten (NaN) elements"
        torch.testing.assert_close(p, c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_every_output_written_cpu(kind, case, backend):
    if kind != "lstm" and case[3]:
        case = case[:3] + (0,) + case[4:]
    check(kind, case, backend, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_every_output_written_cuda(kind, case):
    if kind != "lstm" and case[3]:
        case = case[:3] + (0,) + case[4:]
    check(kind, case, "cuda", "cuda")
