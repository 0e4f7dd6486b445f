"""The Triton sequence ops as torch.library custom ops
(torch.ops.rnn_ext.triton_{lstm,gru,rnn}_{forward,backward}): input checks,
fake (meta) implementations and autograd, so that torch.compile traces them
without a graph break and torch.library.opcheck passes.

The schemas mirror the compiled ops (rnn_ext::lstm_forward, ...) plus a
`strategy` argument ("auto", "persistent", "grid" or "step").  Double backward
recomputes with the differentiable reference, as for the compiled ops.
"""
from typing import Optional

import torch

from .. import _checks, _function, reference
from .._ops import _create_graph, _higher_order, _zeros_if_none
from . import _sequence
from ._sequence import STRATEGIES, acc_dtype

Tensor = torch.Tensor
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- checks ----
# The shape, dtype and device checks are rnn_ext._checks' (one copy for every
# backend); here only what is particular to the Triton kernels.
def _check_triton(op, gx, strategy):
    if gx.dtype not in _FLOAT_DTYPES:
        _checks._fail(op, f"input_gates has dtype {gx.dtype}, which the Triton kernels do not support")
    if strategy not in STRATEGIES:
        _checks._fail(op, f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def check_lstm_forward(gx, w_hh, b_hh, w_hr, h0, c0, lengths, strategy, op="rnn_ext::triton_lstm_forward"):
    if h0 is None or c0 is None:
        _checks._fail(op, "h0 and c0 are required")
    dims = _checks.check_lstm_forward(gx, w_hh, b_hh, w_hr, h0, c0, lengths, op=op)
    _check_triton(op, gx, strategy)
    return dims


def check_gru_forward(gx, w_hh, b_hh, h0, lengths, strategy, op="rnn_ext::triton_gru_forward"):
    if h0 is None:
        _checks._fail(op, "h0 is required")
    dims = _checks.check_gru_forward(gx, w_hh, b_hh, h0, lengths, op=op)
    _check_triton(op, gx, strategy)
    return dims


def check_lstm_backward(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, ws, proj_in,
                        lengths, grad_ws, strategy, op="rnn_ext::triton_lstm_backward"):
    _checks.check_lstm_backward(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, ws, proj_in,
                                lengths, grad_ws, op)
    _check_triton(op, y, strategy)


def check_gru_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, strategy,
                       op="rnn_ext::triton_gru_backward"):
    _checks.check_gru_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, op)
    _check_triton(op, y, strategy)


_check_length_values = _checks.check_length_values


def _usable(op, t):
    from . import why_not

    reason = why_not(t.device, t.dtype)
    if reason is not None:
        raise RuntimeError(f"{op}: the Triton backend cannot run this request: {reason}")


def _c(t):
    return None if t is None else t.contiguous()


# ---------------------------------------------------------------- LSTM ----
@torch.library.custom_op("rnn_ext::triton_lstm_forward", mutates_args=())
def lstm_forward(input_gates: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                 h0: Tensor, c0: Tensor, lengths: Optional[Tensor], strategy: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    op = "rnn_ext::triton_lstm_forward"
    T = check_lstm_forward(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths, strategy)[0]
    _check_length_values(lengths, T)
    _usable(op, input_gates)
    return _sequence.lstm_forward(input_gates.contiguous(), w_hh.contiguous(), _c(b_hh), _c(w_hr),
                                  h0.contiguous(), c0.contiguous(), _c(lengths), strategy)


@lstm_forward.register_fake
def _(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths, strategy):
    T, B, H, P = check_lstm_forward(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths, strategy)
    new = input_gates.new_empty
    return (new((T, B, P or H)), new((B, P or H)), new((B, H)),
            new((T, B, 5 * H), dtype=acc_dtype(input_gates.dtype)), new((T if P else 0, B, H)))


# The backward ops are defined without any autograd kernel (as the compiled
# ops are): custom_op would give them an old-style autograd.Function, which
# torch.func refuses even where nothing is differentiated.
torch.library.define(
    "rnn_ext::triton_lstm_backward",
    "(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor w_hh, Tensor? w_hr, Tensor h0, "
    "Tensor c0, Tensor output, Tensor workspace, Tensor proj_input, Tensor? lengths, "
    "Tensor? grad_workspace, str strategy) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
torch.library.define(
    "rnn_ext::triton_gru_backward",
    "(Tensor grad_output, Tensor grad_h_n, Tensor w_hh, Tensor h0, Tensor output, Tensor workspace, "
    "Tensor? lengths, Tensor? grad_workspace, str strategy) -> (Tensor, Tensor, Tensor, Tensor)")


@torch.library.impl("rnn_ext::triton_lstm_backward", ("CPU", "CUDA"))
def _lstm_backward_impl(grad_output, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, output, workspace,
                        proj_input, lengths, grad_workspace, strategy):
    op = "rnn_ext::triton_lstm_backward"
    check_lstm_backward(grad_output, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, output, workspace,
                        proj_input, lengths, grad_workspace, strategy)
    _check_length_values(lengths, output.shape[0])
    _usable(op, output)
    return _sequence.lstm_backward(
        grad_output.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(), w_hh.contiguous(),
        _c(w_hr), h0.contiguous(), c0.contiguous(), output.contiguous(), workspace.contiguous(),
        proj_input.contiguous(), _c(lengths), _c(grad_workspace), strategy)


@torch.library.register_fake("rnn_ext::triton_lstm_backward")
def _(grad_output, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, output, workspace, proj_input,
      lengths, grad_workspace, strategy):
    check_lstm_backward(grad_output, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, output, workspace,
                        proj_input, lengths, grad_workspace, strategy)
    T, B, _ = output.shape
    H = workspace.shape[2] // 5
    new = output.new_empty
    return (new((T, B, 4 * H)), new(w_hh.shape), new((4 * H,)),
            new(w_hr.shape) if w_hr is not None else new((0,)), new(h0.shape), new(c0.shape))


lstm_backward = torch.ops.rnn_ext.triton_lstm_backward.default


def _lstm_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(output[4])
    ctx.strategy = inputs[7]
    ctx.save_for_backward(*inputs[:7], *output)


def _lstm_backward(ctx, grad_y, grad_h_n, grad_c_n, grad_ws, _grad_proj):
    saved = ctx.saved_tensors
    gx, w_hh, b_hh, w_hr, h0, c0, lengths, y, h_n, c_n, ws, proj_in = saved
    if _create_graph(saved):
        return _higher_order(ctx, reference.lstm_reference,
                             (gx, w_hh, b_hh, w_hr, h0, c0, lengths),
                             (y, h_n, c_n, ws), (grad_y, grad_h_n, grad_c_n, grad_ws)) + (None,)
    d_gx, d_w_hh, d_b_hh, d_w_hr, d_h0, d_c0 = lstm_backward(
        _zeros_if_none(grad_y, y), _zeros_if_none(grad_h_n, h_n), _zeros_if_none(grad_c_n, c_n),
        w_hh, w_hr, h0, c0, y, ws, proj_in, lengths, grad_ws, ctx.strategy)
    return (d_gx, d_w_hh, d_b_hh if b_hh is not None else None,
            d_w_hr if w_hr is not None else None, d_h0, d_c0, None, None)


lstm_forward.register_autograd(_lstm_backward, setup_context=_lstm_setup_context)
LSTM_FUNCTION = _function.autograd_function("TritonLSTMForward", torch.ops.rnn_ext.triton_lstm_forward.default,
                                            _lstm_setup_context, _lstm_backward)


# ----------------------------------------------------------------- GRU ----
@torch.library.custom_op("rnn_ext::triton_gru_forward", mutates_args=())
def gru_forward(input_gates: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], h0: Tensor,
                lengths: Optional[Tensor], strategy: str) -> tuple[Tensor, Tensor, Tensor]:
    op = "rnn_ext::triton_gru_forward"
    T = check_gru_forward(input_gates, w_hh, b_hh, h0, lengths, strategy)[0]
    _check_length_values(lengths, T)
    _usable(op, input_gates)
    return _sequence.gru_forward(input_gates.contiguous(), w_hh.contiguous(), _c(b_hh),
                                 h0.contiguous(), _c(lengths), strategy)


@gru_forward.register_fake
def _(input_gates, w_hh, b_hh, h0, lengths, strategy):
    T, B, H = check_gru_forward(input_gates, w_hh, b_hh, h0, lengths, strategy)
    new = input_gates.new_empty
    return new((T, B, H)), new((B, H)), new((T, B, 4 * H), dtype=acc_dtype(input_gates.dtype))


@torch.library.impl("rnn_ext::triton_gru_backward", ("CPU", "CUDA"))
def _gru_backward_impl(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace,
                       strategy):
    op = "rnn_ext::triton_gru_backward"
    check_gru_backward(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace,
                       strategy)
    _check_length_values(lengths, output.shape[0])
    _usable(op, output)
    return _sequence.gru_backward(grad_output.contiguous(), grad_h_n.contiguous(), w_hh.contiguous(),
                                  h0.contiguous(), output.contiguous(), workspace.contiguous(),
                                  _c(lengths), _c(grad_workspace), strategy)


@torch.library.register_fake("rnn_ext::triton_gru_backward")
def _(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace, strategy):
    check_gru_backward(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace,
                       strategy)
    T, B, H = output.shape
    new = output.new_empty
    return new((T, B, 3 * H)), new(w_hh.shape), new((3 * H,)), new(h0.shape)


gru_backward = torch.ops.rnn_ext.triton_gru_backward.default


def _gru_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.strategy = inputs[5]
    ctx.save_for_backward(*inputs[:5], *output)


def _gru_backward(ctx, grad_y, grad_h_n, grad_ws):
    saved = ctx.saved_tensors
    gx, w_hh, b_hh, h0, lengths, y, h_n, ws = saved
    if _create_graph(saved):
        return _higher_order(ctx, reference.gru_reference, (gx, w_hh, b_hh, h0, lengths),
                             (y, h_n, ws), (grad_y, grad_h_n, grad_ws)) + (None,)
    d_gx, d_w_hh, d_b_hh, d_h0 = gru_backward(
        _zeros_if_none(grad_y, y), _zeros_if_none(grad_h_n, h_n), w_hh, h0, y, ws, lengths,
        grad_ws, ctx.strategy)
    return d_gx, d_w_hh, d_b_hh if b_hh is not None else None, d_h0, None, None


gru_forward.register_autograd(_gru_backward, setup_context=_gru_setup_context)
GRU_FUNCTION = _function.autograd_function("TritonGRUForward", torch.ops.rnn_ext.triton_gru_forward.default,
                                           _gru_setup_context, _gru_backward)


# ----------------------------------------------------------------- RNN ----
def _check_nonlinearity(op, nonlinearity):
    if nonlinearity not in reference.NONLINEARITIES:
        _checks._fail(op, f"unknown nonlinearity '{nonlinearity}'; choose 'tanh' or 'relu'")


def check_rnn_forward(gx, w_hh, b_hh, h0, lengths, nonlinearity, strategy,
                      op="rnn_ext::triton_rnn_forward"):
    _check_nonlinearity(op, nonlinearity)
    if h0 is None:
        _checks._fail(op, "h0 is required")
    dims = _checks.check_rnn_forward(gx, w_hh, b_hh, h0, lengths, op=op)
    _check_triton(op, gx, strategy)
    return dims


def check_rnn_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, nonlinearity, strategy,
                       op="rnn_ext::triton_rnn_backward"):
    _check_nonlinearity(op, nonlinearity)
    _checks.check_rnn_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, op)
    _check_triton(op, y, strategy)


@torch.library.custom_op("rnn_ext::triton_rnn_forward", mutates_args=())
def rnn_forward(input_gates: Tensor, w_hh: Tensor, b_hh: Optional[Tensor], h0: Tensor,
                lengths: Optional[Tensor], nonlinearity: str, strategy: str
                ) -> tuple[Tensor, Tensor, Tensor]:
    op = "rnn_ext::triton_rnn_forward"
    T = check_rnn_forward(input_gates, w_hh, b_hh, h0, lengths, nonlinearity, strategy)[0]
    _check_length_values(lengths, T)
    _usable(op, input_gates)
    return _sequence.rnn_forward(input_gates.contiguous(), w_hh.contiguous(), _c(b_hh),
                                 h0.contiguous(), _c(lengths), nonlinearity == "relu", strategy)


@rnn_forward.register_fake
def _(input_gates, w_hh, b_hh, h0, lengths, nonlinearity, strategy):
    T, B, H = check_rnn_forward(input_gates, w_hh, b_hh, h0, lengths, nonlinearity, strategy)
    new = input_gates.new_empty
    return new((T, B, H)), new((B, H)), new((T, B, H), dtype=acc_dtype(input_gates.dtype))


torch.library.define(
    "rnn_ext::triton_rnn_backward",
    "(Tensor grad_output, Tensor grad_h_n, Tensor w_hh, Tensor h0, Tensor output, Tensor workspace, "
    "Tensor? lengths, Tensor? grad_workspace, str nonlinearity, str strategy) "
    "-> (Tensor, Tensor, Tensor, Tensor)")


@torch.library.impl("rnn_ext::triton_rnn_backward", ("CPU", "CUDA"))
def _rnn_backward_impl(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace,
                       nonlinearity, strategy):
    op = "rnn_ext::triton_rnn_backward"
    check_rnn_backward(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace,
                       nonlinearity, strategy)
    _check_length_values(lengths, output.shape[0])
    _usable(op, output)
    return _sequence.rnn_backward(grad_output.contiguous(), grad_h_n.contiguous(), w_hh.contiguous(),
                                  h0.contiguous(), output.contiguous(), workspace.contiguous(),
                                  _c(lengths), _c(grad_workspace), nonlinearity == "relu", strategy)


@torch.library.register_fake("rnn_ext::triton_rnn_backward")
def _(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace, nonlinearity,
      strategy):
    check_rnn_backward(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace,
                       nonlinearity, strategy)
    T, B, H = output.shape
    new = output.new_empty
    return new((T, B, H)), new(w_hh.shape), new((H,)), new(h0.shape)


rnn_backward = torch.ops.rnn_ext.triton_rnn_backward.default


def _rnn_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.nonlinearity, ctx.strategy = inputs[5], inputs[6]
    ctx.save_for_backward(*inputs[:5], *output)


def _rnn_backward(ctx, grad_y, grad_h_n, grad_ws):
    saved = ctx.saved_tensors
    gx, w_hh, b_hh, h0, lengths, y, h_n, ws = saved
    if _create_graph(saved):
        return _higher_order(ctx, reference.rnn_reference,
                             (gx, w_hh, b_hh, h0, lengths, ctx.nonlinearity),
                             (y, h_n, ws), (grad_y, grad_h_n, grad_ws)) + (None,)
    d_gx, d_w_hh, d_b_hh, d_h0 = rnn_backward(
        _zeros_if_none(grad_y, y), _zeros_if_none(grad_h_n, h_n), w_hh, h0, y, ws, lengths,
        grad_ws, ctx.nonlinearity, ctx.strategy)
    return d_gx, d_w_hh, d_b_hh if b_hh is not None else None, d_h0, None, None, None


rnn_forward.register_autograd(_rnn_backward, setup_context=_rnn_setup_context)
RNN_FUNCTION = _function.autograd_function("TritonRNNForward", torch.ops.rnn_ext.triton_rnn_forward.default,
                                           _rnn_setup_context, _rnn_backward)
