"""The input projection of a layer, x W_ih^T + b_ih over the whole sequence,
as one GEMM before the recurrence.

On the CPU in fp32 it runs through oneDNN's matmul (PyTorch's
mkldnn._linear_pointwise, what Inductor uses for linear layers) instead of
F.linear's MKL sgemm where that was measured faster, and so may the input
gradient; the weight gradient stays with MKL, at the machine's rate there.
Which is faster depends on the instruction set oneDNN and MKL pick their
kernels for, so the rule is one row per ISA (RULES; measurements in
benchmarks/NOTES.md, both on AMD EPYC CPUs, where MKL does not take its
fastest code path):
  AVX512  oneDNN for both products from 256 rows (T x B) on: 1.1x-1.6x
          MKL there; below, oneDNN's per-call weight reorder does not pay
          (24 rows: 1.5x-3x slower than MKL).
  AVX2    the forward through oneDNN from 16 rows on where the weight is
          large (I >= 256 and at least 2^18 elements): 1.1x-1.6x MKL at
          24-128 rows, about equal beyond; with small weights MKL (up to
          2x faster at I = 16).  The input gradient through oneDNN only from
          1024 rows on: with the transposed weight view it was 0.6x-0.95x
          MKL's mm below that, about equal above.
Everywhere else (GPU, other dtypes or ISAs, torch.compile, torch.func,
tracing, oneDNN switched off or absent) it is F.linear, unchanged.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._function import plain_eager

_onednn_linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_ONEDNN = _onednn_linear is not None and torch.backends.mkldnn.is_available()


@dataclass(frozen=True)
class Rule:
    """When the projection's products go through oneDNN (fp32, CPU)."""
    min_rows: int         # forward: at least this many rows (T x B) ...
    min_in: int           # ... an input size at least this ...
    min_weight: int       # ... and at least this many weight elements
    grad_min_rows: int    # the input gradient: at least this many rows


RULES = {
    "AVX512": Rule(min_rows=256, min_in=0, min_weight=0, grad_min_rows=256),
    "AVX2": Rule(min_rows=16, min_in=256, min_weight=1 << 18, grad_min_rows=1024),
}


def _cpu_rule():
    try:
        return RULES.get(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 -- an unknown build: no rule, F.linear
        return None


RULE = _cpu_rule()


def _linear(x2d, w, b):
    return _onednn_linear(x2d, w, b, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(x, w, b):
        return _linear(x.reshape(-1, x.size(-1)), w, b).view(*x.shape[:-1], w.size(0))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, _ = inputs
        ctx.save_for_backward(x, w)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        g = grad.reshape(-1, grad.size(-1))
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            if RULE is not None and g.size(0) >= RULE.grad_min_rows:
                # w.t() as oneDNN's weight [in, out] view: no transposed copy.
                gx = _linear(g, w.t(), None).view(x.shape)
            else:
                gx = g.mm(w).view(x.shape)
        if ctx.needs_input_grad[1]:
            gw = g.t().mm(x.reshape(-1, x.size(-1)))
        if ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


def _use_onednn(x, w, b):
    # plain_eager() first: torch.compile must not see the rest (it traces F.linear).
    if not (plain_eager() and _ONEDNN and RULE is not None and x.device.type == "cpu"
            and x.dtype == torch.float32 and w.dtype == torch.float32
            and (b is None or b.dtype == torch.float32) and torch.backends.mkldnn.enabled):
        return False
    rows = x.numel() // max(x.size(-1), 1)
    return (x.numel() > 0 and rows >= RULE.min_rows and x.size(-1) >= RULE.min_in
            and w.numel() >= RULE.min_weight)


def input_projection(x, w, b):
    """F.linear(x, w, b) for x [..., I], through oneDNN where that is faster."""
    if not _use_onednn(x, w, b):
        return F.linear(x, w, b)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, b)):
        return _OneDNNLinear.apply(x, w, b)
    return _OneDNNLinear.forward(x, w, b)
