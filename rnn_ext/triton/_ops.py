"""The Triton sequence ops as torch.library custom ops
(torch.ops.rnn_ext.triton_{lstm,gru,rnn}_{forward,backward}): input checks,
fake (meta) implementations and autograd, so that torch.compile traces them
without a graph break and torch.library.opcheck passes.

The schemas mirror the compiled ops (rnn_ext::lstm_forward, ...) plus a
`strategy` argument ("auto", "persistent" or "step").  Double backward
recomputes with the differentiable reference, as for the compiled ops.
"""
from typing import Optional

import torch

from .. import reference
from .._ops import _higher_order, _zeros_if_none
from . import _sequence
from ._sequence import STRATEGIES, acc_dtype

Tensor = torch.Tensor
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- checks ----
# The messages follow the C++ checks of csrc/ops/rnn_ops.cpp.
def _shape(s):
    # str(), not int(): under torch.compile a size is symbolic, and int()
    # would specialise the graph on it (a recompile per sequence length).
    return "[" + ", ".join(str(x) for x in s) + "]"


def _check(cond, op, msg):
    if not cond:
        raise RuntimeError(f"{op}: {msg}")


def _check_dense(op, name, t, like):
    _check(t.layout == torch.strided, op, f"{name} must be a dense tensor")
    _check(t.dtype == like.dtype, op, f"{name} has dtype {t.dtype} but input_gates has dtype "
           f"{like.dtype}; all tensors must share one dtype")
    _check(t.device == like.device, op, f"{name} is on {t.device} but input_gates is on {like.device}")


def _check_same(op, name, t, like, shape):
    _check_dense(op, name, t, like)
    _check(tuple(t.shape) == tuple(shape), op,
           f"expected {name} of shape {_shape(shape)}, got {_shape(t.shape)}")


def _check_lengths(op, lengths, B):
    if lengths is None:
        return
    _check(lengths.device.type == "cpu", op, "lengths must be a CPU tensor (as for "
           f"pack_padded_sequence), got one on {lengths.device}")
    _check(lengths.dtype == torch.int64, op, f"lengths must be int64, got {lengths.dtype}")
    _check(lengths.dim() == 1 and lengths.shape[0] == B, op,
           f"lengths must have shape [B] = [{B}], got {_shape(lengths.shape)}")


def _check_length_values(lengths, T):
    """Values are only known on real tensors (not in fake/meta mode)."""
    if lengths is None:
        return
    bad = ((lengths < 0) | (lengths > T)).nonzero()
    if bad.numel():
        b = int(bad[0, 0])
        raise RuntimeError(f"rnn_ext: lengths[{b}] = {int(lengths[b])} is out of range [0, T] with T = {T}")


def _check_input_gates(op, gx, n_gates, gate_str):
    _check(gx.dim() == 3, op, f"input_gates must be 3-D [T, B, {gate_str}], got {gx.dim()}-D")
    _check(gx.dtype.is_floating_point, op, f"input_gates must be floating point, got {gx.dtype}")
    _check(gx.dtype in _FLOAT_DTYPES, op, f"input_gates has dtype {gx.dtype}, which the Triton kernels do not support")
    T, B, G = gx.shape
    _check(T > 0 and B > 0 and G > 0, op, f"input_gates must be non-empty, got {_shape(gx.shape)}")
    _check(G % n_gates == 0, op, f"last dim of input_gates must be {gate_str}, got {G}")
    return T, B, G // n_gates


def _check_strategy(op, strategy):
    _check(strategy in STRATEGIES, op, f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def check_lstm_forward(gx, w_hh, b_hh, w_hr, h0, c0, lengths, strategy, op="rnn_ext::triton_lstm_forward"):
    T, B, H = _check_input_gates(op, gx, 4, "4H")
    hout = H
    if w_hr is not None:
        _check_dense(op, "w_hr", w_hr, gx)
        _check(w_hr.dim() == 2 and w_hr.shape[1] == H and w_hr.shape[0] > 0, op,
               f"expected w_hr of shape [P, H] with H = {H}, got {_shape(w_hr.shape)}")
        hout = w_hr.shape[0]
    _check_same(op, "w_hh", w_hh, gx, (4 * H, hout))
    if b_hh is not None:
        _check_same(op, "b_hh", b_hh, gx, (4 * H,))
    _check_same(op, "h0", h0, gx, (B, hout))
    _check_same(op, "c0", c0, gx, (B, H))
    _check_lengths(op, lengths, B)
    _check_strategy(op, strategy)
    return T, B, H, (w_hr.shape[0] if w_hr is not None else 0)


def check_gru_forward(gx, w_hh, b_hh, h0, lengths, strategy, op="rnn_ext::triton_gru_forward"):
    T, B, H = _check_input_gates(op, gx, 3, "3H")
    _check_same(op, "w_hh", w_hh, gx, (3 * H, H))
    if b_hh is not None:
        _check_same(op, "b_hh", b_hh, gx, (3 * H,))
    _check_same(op, "h0", h0, gx, (B, H))
    _check_lengths(op, lengths, B)
    _check_strategy(op, strategy)
    return T, B, H


def _check_workspace_grad(op, grad_ws, ws):
    if grad_ws is not None:
        _check(tuple(grad_ws.shape) == tuple(ws.shape) and grad_ws.dtype == ws.dtype
               and grad_ws.device == ws.device, op, "grad_workspace must match workspace")


def check_lstm_backward(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, ws, proj_in,
                        lengths, grad_ws, strategy, op="rnn_ext::triton_lstm_backward"):
    _check(y.dim() == 3 and ws.dim() == 3 and ws.shape[2] % 5 == 0, op,
           "output must be [T, B, H] and workspace [T, B, 5H]")
    T, B, hout = y.shape
    H = ws.shape[2] // 5
    _check_same(op, "grad_output", grad_y, y, y.shape)
    _check_same(op, "grad_h_n", grad_h_n, y, (B, hout))
    _check_same(op, "grad_c_n", grad_c_n, y, (B, H))
    _check_same(op, "h0", h0, y, (B, hout))
    _check_same(op, "c0", c0, y, (B, H))
    _check_same(op, "w_hh", w_hh, y, (4 * H, hout))
    if w_hr is not None:
        _check_same(op, "w_hr", w_hr, y, (hout, H))
        _check_same(op, "proj_input", proj_in, y, (T, B, H))
    _check(tuple(ws.shape[:2]) == (T, B) and ws.dtype == acc_dtype(y.dtype) and ws.device == y.device,
           op, "workspace does not match output")
    _check_workspace_grad(op, grad_ws, ws)
    _check_lengths(op, lengths, B)
    _check_strategy(op, strategy)


def check_gru_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, strategy,
                       op="rnn_ext::triton_gru_backward"):
    _check(y.dim() == 3 and ws.dim() == 3, op, "output must be [T, B, H]")
    T, B, H = y.shape
    _check_same(op, "grad_output", grad_y, y, y.shape)
    _check_same(op, "grad_h_n", grad_h_n, y, (B, H))
    _check_same(op, "h0", h0, y, (B, H))
    _check_same(op, "w_hh", w_hh, y, (3 * H, H))
    _check(tuple(ws.shape) == (T, B, 4 * H) and ws.dtype == acc_dtype(y.dtype) and ws.device == y.device,
           op, "workspace does not match output")
    _check_workspace_grad(op, grad_ws, ws)
    _check_lengths(op, lengths, B)
    _check_strategy(op, strategy)


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


@torch.library.custom_op("rnn_ext::triton_lstm_backward", mutates_args=())
def lstm_backward(grad_output: Tensor, grad_h_n: Tensor, grad_c_n: Tensor, w_hh: Tensor,
                  w_hr: Optional[Tensor], h0: Tensor, c0: Tensor, output: Tensor, workspace: Tensor,
                  proj_input: Tensor, lengths: Optional[Tensor], grad_workspace: Optional[Tensor],
                  strategy: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    op = "rnn_ext::triton_lstm_backward"
    check_lstm_backward(grad_output, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, output, workspace,
                        proj_input, lengths, grad_workspace, strategy)
    _check_length_values(lengths, output.shape[0])
    _usable(op, output)
    return _sequence.lstm_backward(
        grad_output.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(), w_hh.contiguous(),
        _c(w_hr), h0.contiguous(), c0.contiguous(), output.contiguous(), workspace.contiguous(),
        proj_input.contiguous(), _c(lengths), _c(grad_workspace), strategy)


@lstm_backward.register_fake
def _(grad_output, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, output, workspace, proj_input,
      lengths, grad_workspace, strategy):
    check_lstm_backward(grad_output, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, output, workspace,
                        proj_input, lengths, grad_workspace, strategy)
    T, B, _ = output.shape
    H = workspace.shape[2] // 5
    new = output.new_empty
    return (new((T, B, 4 * H)), new(w_hh.shape), new((4 * H,)),
            new(w_hr.shape) if w_hr is not None else new((0,)), new(h0.shape), new(c0.shape))


def _lstm_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(output[4])
    ctx.strategy = inputs[7]
    ctx.save_for_backward(*inputs[:7], *output)


def _lstm_backward(ctx, grad_y, grad_h_n, grad_c_n, grad_ws, _grad_proj):
    gx, w_hh, b_hh, w_hr, h0, c0, lengths, y, h_n, c_n, ws, proj_in = ctx.saved_tensors
    if torch.is_grad_enabled():
        return _higher_order(ctx, reference.lstm_reference,
                             (gx, w_hh, b_hh, w_hr, h0, c0, lengths),
                             (y, h_n, c_n, ws), (grad_y, grad_h_n, grad_c_n, grad_ws)) + (None,)
    d_gx, d_w_hh, d_b_hh, d_w_hr, d_h0, d_c0 = lstm_backward(
        _zeros_if_none(grad_y, y), _zeros_if_none(grad_h_n, h_n), _zeros_if_none(grad_c_n, c_n),
        w_hh, w_hr, h0, c0, y, ws, proj_in, lengths, grad_ws, ctx.strategy)
    return (d_gx, d_w_hh, d_b_hh if b_hh is not None else None,
            d_w_hr if w_hr is not None else None, d_h0, d_c0, None, None)


lstm_forward.register_autograd(_lstm_backward, setup_context=_lstm_setup_context)


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


@torch.library.custom_op("rnn_ext::triton_gru_backward", mutates_args=())
def gru_backward(grad_output: Tensor, grad_h_n: Tensor, w_hh: Tensor, h0: Tensor, output: Tensor,
                 workspace: Tensor, lengths: Optional[Tensor], grad_workspace: Optional[Tensor],
                 strategy: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    op = "rnn_ext::triton_gru_backward"
    check_gru_backward(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace,
                       strategy)
    _check_length_values(lengths, output.shape[0])
    _usable(op, output)
    return _sequence.gru_backward(grad_output.contiguous(), grad_h_n.contiguous(), w_hh.contiguous(),
                                  h0.contiguous(), output.contiguous(), workspace.contiguous(),
                                  _c(lengths), _c(grad_workspace), strategy)


@gru_backward.register_fake
def _(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace, strategy):
    check_gru_backward(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace,
                       strategy)
    T, B, H = output.shape
    new = output.new_empty
    return new((T, B, 3 * H)), new(w_hh.shape), new((3 * H,)), new(h0.shape)


def _gru_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.strategy = inputs[5]
    ctx.save_for_backward(*inputs[:5], *output)


def _gru_backward(ctx, grad_y, grad_h_n, grad_ws):
    gx, w_hh, b_hh, h0, lengths, y, h_n, ws = ctx.saved_tensors
    if torch.is_grad_enabled():
        return _higher_order(ctx, reference.gru_reference, (gx, w_hh, b_hh, h0, lengths),
                             (y, h_n, ws), (grad_y, grad_h_n, grad_ws)) + (None,)
    d_gx, d_w_hh, d_b_hh, d_h0 = gru_backward(
        _zeros_if_none(grad_y, y), _zeros_if_none(grad_h_n, h_n), w_hh, h0, y, ws, lengths,
        grad_ws, ctx.strategy)
    return d_gx, d_w_hh, d_b_hh if b_hh is not None else None, d_h0, None, None


gru_forward.register_autograd(_gru_backward, setup_context=_gru_setup_context)


# ----------------------------------------------------------------- RNN ----
def _check_nonlinearity(op, nonlinearity):
    _check(nonlinearity in reference.NONLINEARITIES, op,
           f"unknown nonlinearity '{nonlinearity}'; choose 'tanh' or 'relu'")


def check_rnn_forward(gx, w_hh, b_hh, h0, lengths, nonlinearity, strategy,
                      op="rnn_ext::triton_rnn_forward"):
    _check_nonlinearity(op, nonlinearity)
    T, B, H = _check_input_gates(op, gx, 1, "H")
    _check_same(op, "w_hh", w_hh, gx, (H, H))
    if b_hh is not None:
        _check_same(op, "b_hh", b_hh, gx, (H,))
    _check_same(op, "h0", h0, gx, (B, H))
    _check_lengths(op, lengths, B)
    _check_strategy(op, strategy)
    return T, B, H


def check_rnn_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, nonlinearity, strategy,
                       op="rnn_ext::triton_rnn_backward"):
    _check_nonlinearity(op, nonlinearity)
    _check(y.dim() == 3 and ws.dim() == 3, op, "output must be [T, B, H]")
    T, B, H = y.shape
    _check_same(op, "grad_output", grad_y, y, y.shape)
    _check_same(op, "grad_h_n", grad_h_n, y, (B, H))
    _check_same(op, "h0", h0, y, (B, H))
    _check_same(op, "w_hh", w_hh, y, (H, H))
    _check(tuple(ws.shape) == (T, B, H) and ws.dtype == acc_dtype(y.dtype) and ws.device == y.device,
           op, "workspace does not match output")
    _check_workspace_grad(op, grad_ws, ws)
    _check_lengths(op, lengths, B)
    _check_strategy(op, strategy)


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


@torch.library.custom_op("rnn_ext::triton_rnn_backward", mutates_args=())
def rnn_backward(grad_output: Tensor, grad_h_n: Tensor, w_hh: Tensor, h0: Tensor, output: Tensor,
                 workspace: Tensor, lengths: Optional[Tensor], grad_workspace: Optional[Tensor],
                 nonlinearity: str, strategy: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    op = "rnn_ext::triton_rnn_backward"
    check_rnn_backward(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace,
                       nonlinearity, strategy)
    _check_length_values(lengths, output.shape[0])
    _usable(op, output)
    return _sequence.rnn_backward(grad_output.contiguous(), grad_h_n.contiguous(), w_hh.contiguous(),
                                  h0.contiguous(), output.contiguous(), workspace.contiguous(),
                                  _c(lengths), _c(grad_workspace), nonlinearity == "relu", strategy)


@rnn_backward.register_fake
def _(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace, nonlinearity,
      strategy):
    check_rnn_backward(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths, grad_workspace,
                       nonlinearity, strategy)
    T, B, H = output.shape
    new = output.new_empty
    return new((T, B, H)), new(w_hh.shape), new((H,)), new(h0.shape)


def _rnn_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.nonlinearity, ctx.strategy = inputs[5], inputs[6]
    ctx.save_for_backward(*inputs[:5], *output)


def _rnn_backward(ctx, grad_y, grad_h_n, grad_ws):
    gx, w_hh, b_hh, h0, lengths, y, h_n, ws = ctx.saved_tensors
    if torch.is_grad_enabled():
        return _higher_order(ctx, reference.rnn_reference,
                             (gx, w_hh, b_hh, h0, lengths, ctx.nonlinearity),
                             (y, h_n, ws), (grad_y, grad_h_n, grad_ws)) + (None,)
    d_gx, d_w_hh, d_b_hh, d_h0 = rnn_backward(
        _zeros_if_none(grad_y, y), _zeros_if_none(grad_h_n, h_n), w_hh, h0, y, ws, lengths,
        grad_ws, ctx.nonlinearity, ctx.strategy)
    return d_gx, d_w_hh, d_b_hh if b_hh is not None else None, d_h0, None, None, None


rnn_forward.register_autograd(_rnn_backward, setup_context=_rnn_setup_context)
