"""One layer direction of a module, input projection and recurrence, in
one call: what the modules run on the CPU backend in plain eager mode.
Where a gradient is to be recorded it is a single autograd node; else the
projection and the inference kernel, called directly, without the
functional API's checks and dispatch, which the modules' inputs have
already passed.

As two nodes (the projection's autograd.Function, then the sequence op's)
a training step paid for two Python forwards and backwards, the engine
between them, the same bias gradient summed twice (b_ih's and b_hh's are
one sum of the gate gradients for LSTM and RNN) and the input gates kept
alive until backward: at B=16, H=256, T=24 the same op calls made without
autograd took 15% less time than the LSTM training step
(benchmarks/NOTES.md).  Here the gates are freed once the recurrence has
read them, and backward runs the sequence op's backward, then the
projection's products on its gate gradients.

Where the CPU kind's rule says so (input_phase), an LSTM layer is one op
that computes its input gates inside the recurrence, and its backward
the input's gradient (rnn_ext::lstm_layer_*; partition.h's input phase).

Backward with create_graph=True (double backward) differentiates the
reference (F.linear, then rnn_ext/reference.py), as the sequence ops do.
"""
import os

import torch
import torch.nn.functional as F

from . import _ops, _projection, reference
from ._function import _apply_base, _below_autograd
from ._ops import ops
from ._projection import _route, onednn_product, product_grads

_zeros_if_none = _ops._zeros_if_none


def _reference(cell, nonlinearity, onednn, in_loop, x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0):
    """The layer by the differentiable reference: (y, h_n[, c_n]).  It takes
    _Layer.forward's arguments (onednn and in_loop unused), so that
    _ops._higher_order can match them to needs_input_grad by position."""
    gx = F.linear(x, w_ih, b_ih)
    if cell == "lstm":
        return reference.lstm_reference(gx, w_hh, b_hh, w_hr, h0, c0)[:3]
    if cell == "gru":
        return reference.gru_reference(gx, w_hh, b_hh, h0)[:2]
    return reference.rnn_reference(gx, w_hh, b_hh, h0, nonlinearity=nonlinearity)[:2]


def _input_gates(onednn, x, w_ih, b_ih):
    return onednn_product(x, w_ih, b_ih) if onednn else F.linear(x, w_ih, b_ih)


# "1": every LSTM layer (fp32, fp64) computes its input gates inside the
# recurrence, "0": none does; else the machine's rule decides (tests,
# measurements).  Read per call.
INPUT_PHASE_ENV = "RNN_EXT_CPU_INPUT_PHASE"


def input_phase(cell, x, w_ih, w_hh):
    """Whether the layer runs as one op that computes the input gates
    inside the partitioned recurrence (its input phase: rnn_ext::lstm_layer_*)
    instead of one projection before it.  Each worker then multiplies x_t by
    its own rows of W_ih, resident beside its W_hh, while it waits at the
    step's barrier.  Measured on a Zen 5 (benchmarks/NOTES.md): 1.1x-1.25x
    the two calls from B = 4 while W_ih and W_hh fit in 8 MiB; slower at
    B = 1-2 (a per-step product of one or two rows) and where they do not
    fit (0.5x-0.8x at H = 768-1024, B = 4-16).  LSTM only."""
    if cell != "lstm":
        return False
    forced = os.environ.get(INPUT_PHASE_ENV)
    if forced in ("0", "1"):
        return forced == "1" and x.dtype in (torch.float32, torch.float64)
    rule = _projection.RULE
    return (rule is not None and rule.input_phase_max_mib > 0 and x.dtype == torch.float32
            and x.size(1) >= rule.input_phase_min_batch
            and (w_ih.numel() + w_hh.numel()) * 4 <= rule.input_phase_max_mib << 20
            # the per-worker products are brgemm's (RNN_EXT_CPU_BRGEMM=0: MKL's)
            and os.environ.get("RNN_EXT_CPU_BRGEMM") != "0")


class _Layer(torch.autograd.Function):
    # Arguments: cell ("lstm", "gru", "rnn"), nonlinearity (RNN), onednn
    # (whether the projection runs through oneDNN: _projection._route),
    # in_loop (input_phase), then x [T, B, I], w_ih, b_ih, w_hh, b_hh, w_hr,
    # h0, c0 (None where absent).
    @staticmethod
    def forward(ctx, cell, nonlinearity, onednn, in_loop, x, w_ih, b_ih, w_hh, b_hh, w_hr, h0,
                c0):
        gx = None if in_loop else _input_gates(onednn, x, w_ih, b_ih)
        with _below_autograd():
            if in_loop:
                y, h_n, c_n, ws, proj_in = ops.lstm_layer_forward.default(
                    x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, None)
            elif cell == "lstm":
                y, h_n, c_n, ws, proj_in = ops.lstm_forward.default(gx, w_hh, b_hh, w_hr, h0, c0,
                                                                    None)
            elif cell == "gru":
                y, h_n, ws = ops.gru_forward.default(gx, w_hh, b_hh, h0, None)
                c_n = proj_in = None
            else:
                y, h_n, ws = ops.rnn_forward.default(gx, w_hh, b_hh, h0, None, nonlinearity)
                c_n = proj_in = None
        ctx.set_materialize_grads(False)
        ctx.cell, ctx.nonlinearity, ctx.onednn, ctx.in_loop = cell, nonlinearity, onednn, in_loop
        ctx.save_for_backward(x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, y, ws, proj_in)
        return (y, h_n, c_n) if cell == "lstm" else (y, h_n)

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, grad_c_n=None):
        saved = ctx.saved_tensors
        x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, y, ws, proj_in = saved
        cell, needs = ctx.cell, ctx.needs_input_grad
        if _ops._create_graph(saved):
            return _ops._higher_order(
                ctx, _reference, (cell, ctx.nonlinearity, ctx.onednn, ctx.in_loop, *saved[:8]), (),
                (grad_y, grad_h_n) + ((grad_c_n,) if cell == "lstm" else ()))
        # Without h0's gradient (hx not given) the last step's product is skipped.
        grad_h0 = needs[10]
        grad_y = _zeros_if_none(grad_y, y)
        grad_h_n = _zeros_if_none(grad_h_n, h0)
        d_w_hr = d_c0 = None
        d_x = None
        with _below_autograd():
            if ctx.in_loop and needs[4]:  # the input's gradient inside the loop too
                d_x, d_gx, d_w_hh, d_b_hh, d_w_hr, d_h0, d_c0 = ops.lstm_layer_backward.default(
                    grad_y, grad_h_n, _zeros_if_none(grad_c_n, c0), w_ih, w_hh, w_hr, h0, c0, y,
                    ws, proj_in, None, grad_h0)
            elif cell == "lstm":
                d_gx, d_w_hh, d_b_hh, d_w_hr, d_h0, d_c0 = ops.lstm_backward.default(
                    grad_y, grad_h_n, _zeros_if_none(grad_c_n, c0), w_hh, w_hr, h0, c0, y, ws,
                    proj_in, None, None, grad_h0)
            elif cell == "gru":
                d_gx, d_w_hh, d_b_hh, d_h0 = ops.gru_backward.default(
                    grad_y, grad_h_n, w_hh, h0, y, ws, None, None, grad_h0)
            else:
                d_gx, d_w_hh, d_b_hh, d_h0 = ops.rnn_backward.default(
                    grad_y, grad_h_n, w_hh, h0, y, ws, None, None, ctx.nonlinearity,
                    grad_h0)
        g = d_gx.view(-1, d_gx.size(-1))
        d_x_by_product, d_w_ih = product_grads(g, x.reshape(-1, x.size(-1)), w_ih,
                                               needs[4] and d_x is None, needs[5], ctx.onednn)
        if d_x is None:
            d_x = d_x_by_product
        d_b_ih = None
        if needs[6]:
            # LSTM's and RNN's gate gradients are those of both biases: one
            # sum serves both (autograd copies it for the second).  GRU's
            # b_hn sits inside r * (...): its b_hh gradient differs.
            d_b_ih = g.sum(0) if cell == "gru" else d_b_hh
        return (None, None, None, None, None if d_x is None else d_x.view(x.shape), d_w_ih,
                d_b_ih, d_w_hh, d_b_hh if b_hh is not None else None,
                d_w_hr if w_hr is not None else None, d_h0 if grad_h0 else None, d_c0)


def _infer(cell, nonlinearity, onednn, in_loop, x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0):
    """The layer where nothing needs a gradient: the projection, then the
    sequence op's inference kernel, which keeps no workspace (or the one op
    of both, in_loop)."""
    if in_loop:
        with _below_autograd():
            return ops.lstm_layer_infer.default(x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, None)
    gx = _input_gates(onednn, x, w_ih, b_ih)
    with _below_autograd():
        if cell == "lstm":
            return ops.lstm_infer.default(gx, w_hh, b_hh, w_hr, h0, c0, None)
        if cell == "gru":
            return (*ops.gru_infer.default(gx, w_hh, b_hh, h0, None), None)
        return (*ops.rnn_infer.default(gx, w_hh, b_hh, h0, None, nonlinearity), None)


def layer(cell, x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, nonlinearity="tanh"):
    """One layer direction over x [T, B, I] (time order as given): (y, h_n,
    c_n), c_n None for GRU and RNN.  For the modules' CPU backend in plain
    eager mode (rnn_ext/modules.py decides): one autograd node where a
    gradient is to be recorded, else the inference kernel."""
    onednn = _route(x, w_ih, b_ih) == "onednn"
    in_loop = input_phase(cell, x, w_ih, w_hh)
    args = (cell, nonlinearity, onednn, in_loop, x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0)
    if not (torch.is_grad_enabled()
            and any(t is not None and t.requires_grad for t in args[4:])):
        return _infer(*args)
    out = _apply_base(_Layer, *args)
    return (out[0], out[1], out[2]) if cell == "lstm" else (out[0], out[1], None)
