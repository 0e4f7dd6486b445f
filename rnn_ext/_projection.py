"""The input projection of a layer, x W_ih^T + b_ih over the whole sequence,
as one GEMM before the recurrence.

On the CPU in fp32 it runs through oneDNN's matmul (PyTorch's
mkldnn._linear_pointwise, what Inductor uses for linear layers) instead of
F.linear's MKL sgemm when the sequence has enough rows (T x B >= MIN_ROWS):
on the AMD EPYC the CPU benchmarks run on, MKL does not take its fastest
code path and oneDNN's product is then 1.1x-1.6x faster; torch.nn's LSTM
gets its projection from oneDNN too.  The
input gradient likewise; the weight gradient stays with MKL, which is as
fast there (benchmarks/NOTES.md).  Everywhere else (GPU, other dtypes,
torch.compile, torch.func, tracing, oneDNN switched off or absent) it is
F.linear, unchanged.
"""
import torch
import torch.nn.functional as F

from ._function import plain_eager

_onednn_linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_ONEDNN = _onednn_linear is not None and torch.backends.mkldnn.is_available()


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
            # w.t() as oneDNN's weight [in, out] view: no transposed copy.
            gx = _linear(g, w.t(), None).view(x.shape)
        if ctx.needs_input_grad[1]:
            gw = g.t().mm(x.reshape(-1, x.size(-1)))
        if ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


# oneDNN's product reorders the weight on every call, which a short product
# does not repay: below this many rows (T x B) MKL is faster (at 24 rows 1.5x-3x,
# at 96 either way, from 256 rows on oneDNN by 1.1x-1.25x; benchmarks/NOTES.md).
MIN_ROWS = 256


def _use_onednn(x, w, b):
    # plain_eager() first: torch.compile must not see the rest (it traces F.linear).
    return (plain_eager() and _ONEDNN and x.device.type == "cpu"
            and x.dtype == torch.float32 and w.dtype == torch.float32
            and (b is None or b.dtype == torch.float32)
            and x.numel() >= MIN_ROWS * x.size(-1) > 0
            and torch.backends.mkldnn.enabled)


def input_projection(x, w, b):
    """F.linear(x, w, b) for x [..., I], through oneDNN where that is faster."""
    if not _use_onednn(x, w, b):
        return F.linear(x, w, b)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, b)):
        return _OneDNNLinear.apply(x, w, b)
    return _OneDNNLinear.forward(x, w, b)
