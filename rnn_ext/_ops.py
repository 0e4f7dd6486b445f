"""The compiled sequence ops (torch.ops.rnn_ext.*): their fake (meta)
implementations and autograd, registered through torch.library so that
opcheck passes and torch.compile traces them without a graph break."""
import torch

from . import _C  # noqa: F401  (loading it registers the ops)
from . import reference
from .reference import acc_dtype

ops = torch.ops.rnn_ext
WITH_CUDA = bool(_C.with_cuda)


# ------------------------------------------------------------------ fake ----
def _check_devices(op, lengths=None, **tensors):
    """The compiled kernels check devices too; the fake (meta) path must
    reject what they reject, since the dispatcher sends mixed-device calls
    that include a meta tensor here."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    first, like = items[0]
    for name, t in items[1:]:
        if t.device != like.device:
            raise RuntimeError(f"rnn_ext::{op}: {name} is on {t.device} but {first} is on {like.device}")
    if lengths is not None and lengths.device.type != "cpu":
        raise RuntimeError(f"rnn_ext::{op}: lengths must be a CPU tensor (as for "
                           f"pack_padded_sequence), got one on {lengths.device}")


@torch.library.register_fake("rnn_ext::lstm_forward")
def _lstm_forward_fake(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths):
    _check_devices("lstm_forward", lengths, input_gates=input_gates, w_hh=w_hh, b_hh=b_hh,
                   w_hr=w_hr, h0=h0, c0=c0)
    T, B, G = input_gates.shape
    H = G // 4
    P = w_hr.shape[0] if w_hr is not None else 0
    new = input_gates.new_empty
    return (
        new((T, B, P or H)),
        new((B, P or H)),
        new((B, H)),
        new((T, B, 5 * H), dtype=acc_dtype(input_gates.dtype)),
        new((T if P else 0, B, H)),
    )


@torch.library.register_fake("rnn_ext::lstm_infer")
def _lstm_infer_fake(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths):
    return _lstm_forward_fake(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths)[:3]


@torch.library.register_fake("rnn_ext::gru_infer")
def _gru_infer_fake(input_gates, w_hh, b_hh, h0, lengths):
    return _gru_forward_fake(input_gates, w_hh, b_hh, h0, lengths)[:2]


@torch.library.register_fake("rnn_ext::rnn_infer")
def _rnn_infer_fake(input_gates, w_hh, b_hh, h0, lengths, nonlinearity):
    return _rnn_forward_fake(input_gates, w_hh, b_hh, h0, lengths, nonlinearity)[:2]


@torch.library.register_fake("rnn_ext::lstm_backward")
def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0,
                        output, workspace, proj_input, lengths, grad_workspace, grad_h0=True):
    T, B, _ = output.shape
    H = workspace.shape[2] // 5
    new = output.new_empty
    return (
        new((T, B, 4 * H)),
        new(w_hh.shape),
        new((4 * H,)),
        new(w_hr.shape) if w_hr is not None else new((0,)),
        new(h0.shape),
        new(c0.shape),
    )


@torch.library.register_fake("rnn_ext::gru_forward")
def _gru_forward_fake(input_gates, w_hh, b_hh, h0, lengths):
    _check_devices("gru_forward", lengths, input_gates=input_gates, w_hh=w_hh, b_hh=b_hh, h0=h0)
    T, B, G = input_gates.shape
    H = G // 3
    new = input_gates.new_empty
    return new((T, B, H)), new((B, H)), new((T, B, 4 * H), dtype=acc_dtype(input_gates.dtype))


@torch.library.register_fake("rnn_ext::gru_backward")
def _gru_backward_fake(grad_output, grad_h_n, w_hh, h0, output, workspace,
                       lengths, grad_workspace, grad_h0=True):
    T, B, H = output.shape
    new = output.new_empty
    return new((T, B, 3 * H)), new(w_hh.shape), new((3 * H,)), new(h0.shape)


@torch.library.register_fake("rnn_ext::rnn_forward")
def _rnn_forward_fake(input_gates, w_hh, b_hh, h0, lengths, nonlinearity):
    _check_devices("rnn_forward", lengths, input_gates=input_gates, w_hh=w_hh, b_hh=b_hh, h0=h0)
    T, B, H = input_gates.shape
    new = input_gates.new_empty
    return new((T, B, H)), new((B, H)), new((T, B, H), dtype=acc_dtype(input_gates.dtype))


@torch.library.register_fake("rnn_ext::rnn_backward")
def _rnn_backward_fake(grad_output, grad_h_n, w_hh, h0, output, workspace,
                       lengths, grad_workspace, nonlinearity, grad_h0=True):
    T, B, H = output.shape
    new = output.new_empty
    return new((T, B, H)), new(w_hh.shape), new((H,)), new(h0.shape)


# Cells: one step with the input projection (csrc/ops/cell_autograd.cpp).
def _cell_fake(op, gates, input, hx, w_ih, w_hh, **others):
    _check_devices(op, input=input, hx=hx, w_ih=w_ih, w_hh=w_hh, **others)
    B, H = input.shape[0], w_hh.shape[1]
    return input.new_empty((B, H)), H


@torch.library.register_fake("rnn_ext::lstm_layer_forward")
def _lstm_layer_forward_fake(input, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, lengths):
    _check_devices("lstm_layer_forward", lengths, input=input, w_ih=w_ih, b_ih=b_ih, w_hh=w_hh,
                   b_hh=b_hh, w_hr=w_hr, h0=h0, c0=c0)
    T, B, _ = input.shape
    gates = input.new_empty((T, B, w_ih.shape[0]))
    return _lstm_forward_fake(gates, w_hh, b_hh, w_hr, h0, c0, lengths)


@torch.library.register_fake("rnn_ext::lstm_layer_infer")
def _lstm_layer_infer_fake(input, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, lengths):
    return _lstm_layer_forward_fake(input, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, lengths)[:3]


@torch.library.register_fake("rnn_ext::lstm_layer_backward")
def _lstm_layer_backward_fake(grad_output, grad_h_n, grad_c_n, w_ih, w_hh, w_hr, h0, c0,
                              output, workspace, proj_input, lengths, grad_h0=True):
    T, B, _ = output.shape
    grads = _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, output,
                                workspace, proj_input, lengths, None, grad_h0)
    return (output.new_empty((T, B, w_ih.shape[1])), *grads)


@torch.library.register_fake("rnn_ext::transposed_product")
def _transposed_product_fake(a, b):
    torch._check(a.dim() == 2 and b.dim() == 2 and a.size(0) == b.size(0))
    return a.new_empty(a.size(1), b.size(1))


@torch.library.register_fake("rnn_ext::short_linear")
def _short_linear_fake(x, w, b):
    torch._check(x.dim() == 2 and w.dim() == 2 and x.size(1) == w.size(1))
    return x.new_empty(x.size(0), w.size(0))


@torch.library.register_fake("rnn_ext::lstm_cell")
def _lstm_cell_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    h, _ = _cell_fake("lstm_cell", 4, input, hx, w_ih, w_hh, cx=cx, b_ih=b_ih, b_hh=b_hh)
    return h, torch.empty_like(h)


@torch.library.register_fake("rnn_ext::lstm_cell_forward")
def _lstm_cell_forward_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    h, H = _cell_fake("lstm_cell_forward", 4, input, hx, w_ih, w_hh, cx=cx, b_ih=b_ih, b_hh=b_hh)
    return h, torch.empty_like(h), input.new_empty((1, h.shape[0], 5 * H), dtype=acc_dtype(input.dtype))


@torch.library.register_fake("rnn_ext::lstm_cell_backward")
def _lstm_cell_backward_fake(grad_h, grad_c, input, hx, cx, w_ih, w_hh, h, workspace):
    new = input.new_empty
    return (new(input.shape), new(hx.shape), new(cx.shape), new(w_ih.shape), new(w_hh.shape),
            new(w_hh.shape[0]), new(w_hh.shape[0]))


@torch.library.register_fake("rnn_ext::gru_cell")
def _gru_cell_fake(input, hx, w_ih, w_hh, b_ih, b_hh):
    return _cell_fake("gru_cell", 3, input, hx, w_ih, w_hh, b_ih=b_ih, b_hh=b_hh)[0]


@torch.library.register_fake("rnn_ext::gru_cell_forward")
def _gru_cell_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh):
    h, H = _cell_fake("gru_cell_forward", 3, input, hx, w_ih, w_hh, b_ih=b_ih, b_hh=b_hh)
    return h, input.new_empty((1, h.shape[0], 4 * H), dtype=acc_dtype(input.dtype))


@torch.library.register_fake("rnn_ext::gru_cell_backward")
def _gru_cell_backward_fake(grad_h, input, hx, w_ih, w_hh, h, workspace):
    new = input.new_empty
    return (new(input.shape), new(hx.shape), new(w_ih.shape), new(w_hh.shape),
            new(w_hh.shape[0]), new(w_hh.shape[0]))


@torch.library.register_fake("rnn_ext::rnn_cell")
def _rnn_cell_fake(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    return _cell_fake("rnn_cell", 1, input, hx, w_ih, w_hh, b_ih=b_ih, b_hh=b_hh)[0]


@torch.library.register_fake("rnn_ext::rnn_cell_forward")
def _rnn_cell_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    h, H = _cell_fake("rnn_cell_forward", 1, input, hx, w_ih, w_hh, b_ih=b_ih, b_hh=b_hh)
    return h, input.new_empty((1, h.shape[0], H), dtype=acc_dtype(input.dtype))


@torch.library.register_fake("rnn_ext::rnn_cell_backward")
def _rnn_cell_backward_fake(grad_h, input, hx, w_ih, w_hh, h, workspace, nonlinearity):
    return _gru_cell_backward_fake(grad_h, input, hx, w_ih, w_hh, h, workspace)


# The cells' steps by the reference formulas, differentiable (composite:
# autograd differentiates the ATen ops they run).  The cell ops' backward
# with create_graph=True (double backward) differentiates these
# (csrc/ops/cell_autograd.cpp), as the sequence ops' backward differentiates
# the reference (_higher_order below): one copy of the formulas.
torch.library.define(
    "rnn_ext::lstm_cell_reference",
    "(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) "
    "-> (Tensor, Tensor)")
torch.library.define(
    "rnn_ext::gru_cell_reference",
    "(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) -> Tensor")
torch.library.define(
    "rnn_ext::rnn_cell_reference",
    "(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
    "str nonlinearity) -> Tensor")


def _input_gates(input, w_ih, b_ih):
    return torch.nn.functional.linear(input, w_ih, b_ih).unsqueeze(0)


@torch.library.impl("rnn_ext::lstm_cell_reference", "CompositeImplicitAutograd")
def _lstm_cell_reference(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    _, h, c, _ = reference.lstm_reference(_input_gates(input, w_ih, b_ih), w_hh, b_hh, None, hx, cx)
    return h, c


@torch.library.impl("rnn_ext::gru_cell_reference", "CompositeImplicitAutograd")
def _gru_cell_reference(input, hx, w_ih, w_hh, b_ih, b_hh):
    return reference.gru_reference(_input_gates(input, w_ih, b_ih), w_hh, b_hh, hx)[1]


@torch.library.impl("rnn_ext::rnn_cell_reference", "CompositeImplicitAutograd")
def _rnn_cell_reference(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    return reference.rnn_reference(_input_gates(input, w_ih, b_ih), w_hh, b_hh, hx,
                                   nonlinearity=nonlinearity)[1]


# -------------------------------------------------------------- autograd ----
def _zeros_if_none(grad, like):
    return torch.zeros_like(like) if grad is None else grad


def _create_graph(saved):
    """Whether backward must return differentiable gradients: it runs with
    create_graph=True for plain autograd.  torch.func's transforms (vjp,
    grad, jacrev) also run backward with create_graph=True, inside the
    transform or (a vjp function called later) after it, on tensors that
    autograd does not record at this level: a recomputation would be cut off
    from its inputs.  They get the kernels' backward, which is exact."""
    if not torch.is_grad_enabled():
        return False
    functorch = torch._C._functorch
    if functorch.peek_interpreter_stack() is not None:
        return False
    return not any(t is not None and functorch.is_functorch_wrapped_tensor(t) for t in saved)


def _higher_order(ctx, fn, inputs, outputs, grads):
    """Backward with create_graph=True (double backward): recompute the step
    with the differentiable reference and let PyTorch differentiate it, so
    the returned gradients are themselves differentiable.

    An input whose gradient is wanted but that does not itself require grad
    here is replaced by a detached copy that does: otherwise the
    recomputation would not depend on it and its gradient would silently
    come out as zero."""
    wanted = [i for i, (x, need) in enumerate(zip(inputs, ctx.needs_input_grad))
              if need and x is not None]
    inputs = list(inputs)
    for i in wanted:
        if not inputs[i].requires_grad:
            inputs[i] = inputs[i].detach().requires_grad_()
    result = [None] * len(inputs)
    with torch.enable_grad():
        pairs = [(o, g) for o, g in zip(fn(*inputs), grads) if g is not None]
        if wanted and pairs:
            got = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted],
                                      [g for _, g in pairs], create_graph=True,
                                      allow_unused=True)
            for i, g in zip(wanted, got):
                result[i] = g if g is not None else torch.zeros_like(inputs[i])
    return tuple(result)


def _lstm_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(output[4])
    ctx.save_for_backward(*inputs, *output[:4], output[4])


# Each cell's backward, for its single-direction op and its pair op (the
# same arguments, stacked): reference_fn is what double backward
# differentiates, backward_op the kernels' backward.
def _lstm_backward_of(reference_fn, backward_op):
    def backward(ctx, grad_y, grad_h_n, grad_c_n, grad_ws, _grad_proj):
        saved = ctx.saved_tensors
        gx, w_hh, b_hh, w_hr, h0, c0, lengths, y, h_n, c_n, ws, proj_in = saved
        if _create_graph(saved):
            return _higher_order(ctx, reference_fn,
                                 (gx, w_hh, b_hh, w_hr, h0, c0, lengths),
                                 (y, h_n, c_n, ws), (grad_y, grad_h_n, grad_c_n, grad_ws))
        # Without h0's gradient (hx not given) the last step's product is skipped.
        grad_h0 = ctx.needs_input_grad[4]
        d_gx, d_w_hh, d_b_hh, d_w_hr, d_h0, d_c0 = backward_op(
            _zeros_if_none(grad_y, y), _zeros_if_none(grad_h_n, h_n),
            _zeros_if_none(grad_c_n, c_n), w_hh, w_hr, h0, c0, y, ws, proj_in,
            lengths, grad_ws, grad_h0)
        return (d_gx, d_w_hh, d_b_hh if b_hh is not None else None,
                d_w_hr if w_hr is not None else None, d_h0 if grad_h0 else None, d_c0, None)
    return backward


_lstm_backward = _lstm_backward_of(reference.lstm_reference, ops.lstm_backward)


def _gru_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs, *output)


def _gru_backward_of(reference_fn, backward_op):
    def backward(ctx, grad_y, grad_h_n, grad_ws):
        saved = ctx.saved_tensors
        gx, w_hh, b_hh, h0, lengths, y, h_n, ws = saved
        if _create_graph(saved):
            return _higher_order(ctx, reference_fn, (gx, w_hh, b_hh, h0, lengths),
                                 (y, h_n, ws), (grad_y, grad_h_n, grad_ws))
        grad_h0 = ctx.needs_input_grad[3]  # as in the LSTM's
        d_gx, d_w_hh, d_b_hh, d_h0 = backward_op(
            _zeros_if_none(grad_y, y), _zeros_if_none(grad_h_n, h_n), w_hh, h0, y,
            ws, lengths, grad_ws, grad_h0)
        return d_gx, d_w_hh, d_b_hh if b_hh is not None else None, d_h0 if grad_h0 else None, None
    return backward


_gru_backward = _gru_backward_of(reference.gru_reference, ops.gru_backward)


def _rnn_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.nonlinearity = inputs[5]
    ctx.save_for_backward(*inputs[:5], *output)


def _rnn_backward_of(reference_fn, backward_op):
    def backward(ctx, grad_y, grad_h_n, grad_ws):
        saved = ctx.saved_tensors
        gx, w_hh, b_hh, h0, lengths, y, h_n, ws = saved
        if _create_graph(saved):
            return _higher_order(ctx, reference_fn,
                                 (gx, w_hh, b_hh, h0, lengths, ctx.nonlinearity),
                                 (y, h_n, ws), (grad_y, grad_h_n, grad_ws))
        grad_h0 = ctx.needs_input_grad[3]  # as in the LSTM's
        d_gx, d_w_hh, d_b_hh, d_h0 = backward_op(
            _zeros_if_none(grad_y, y), _zeros_if_none(grad_h_n, h_n), w_hh, h0, y,
            ws, lengths, grad_ws, ctx.nonlinearity, grad_h0)
        return (d_gx, d_w_hh, d_b_hh if b_hh is not None else None, d_h0 if grad_h0 else None,
                None, None)
    return backward


_rnn_backward = _rnn_backward_of(reference.rnn_reference, ops.rnn_backward)


torch.library.register_autograd("rnn_ext::lstm_forward", _lstm_backward,
                                setup_context=_lstm_setup_context)
torch.library.register_autograd("rnn_ext::gru_forward", _gru_backward,
                                setup_context=_gru_setup_context)
torch.library.register_autograd("rnn_ext::rnn_forward", _rnn_backward,
                                setup_context=_rnn_setup_context)


# ------------------------------------------------------------ pair ops ----
# Both directions of a bidirectional layer in one op call: every tensor but
# lengths stacked on a leading dimension of 2 (direction 0, then direction 1,
# whose input gates the caller has reversed within lengths), the results
# stacked the same way.  Fake and autograd are the single-direction ones'
# per half.
def _check_pair(op, **tensors):
    for name, t in tensors.items():
        if t is not None and (t.dim() < 1 or t.shape[0] != 2):
            raise RuntimeError(f"rnn_ext::{op}: expected {name} with a leading dimension of 2 "
                               f"(both directions stacked: direction 0, then direction 1), "
                               f"got shape {list(t.shape)}")


def _half(t, d):
    return None if t is None else t[d]


def _stacked(outputs):
    return tuple(o.new_empty((2, *o.shape)) for o in outputs)


@torch.library.register_fake("rnn_ext::lstm_pair_forward")
def _lstm_pair_forward_fake(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths):
    _check_pair("lstm_pair_forward", input_gates=input_gates, w_hh=w_hh, b_hh=b_hh, w_hr=w_hr,
                h0=h0, c0=c0)
    _check_devices("lstm_pair_forward", lengths, input_gates=input_gates, w_hh=w_hh, b_hh=b_hh,
                   w_hr=w_hr, h0=h0, c0=c0)
    return _stacked(_lstm_forward_fake(*(_half(t, 0) for t in (input_gates, w_hh, b_hh, w_hr,
                                                                h0, c0)), lengths))


@torch.library.register_fake("rnn_ext::lstm_pair_infer")
def _lstm_pair_infer_fake(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths):
    return _lstm_pair_forward_fake(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths)[:3]


@torch.library.register_fake("rnn_ext::lstm_pair_backward")
def _lstm_pair_backward_fake(grad_output, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0,
                             output, workspace, proj_input, lengths, grad_workspace,
                             grad_h0=True):
    args = (grad_output, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, output, workspace, proj_input)
    _check_pair("lstm_pair_backward", **dict(zip(
        ("grad_output", "grad_h_n", "grad_c_n", "w_hh", "w_hr", "h0", "c0", "output",
         "workspace", "proj_input"), args)))
    return _stacked(_lstm_backward_fake(*(_half(t, 0) for t in args), lengths,
                                        _half(grad_workspace, 0)))


@torch.library.register_fake("rnn_ext::gru_pair_forward")
def _gru_pair_forward_fake(input_gates, w_hh, b_hh, h0, lengths):
    _check_pair("gru_pair_forward", input_gates=input_gates, w_hh=w_hh, b_hh=b_hh, h0=h0)
    _check_devices("gru_pair_forward", lengths, input_gates=input_gates, w_hh=w_hh, b_hh=b_hh,
                   h0=h0)
    return _stacked(_gru_forward_fake(*(_half(t, 0) for t in (input_gates, w_hh, b_hh, h0)),
                                      lengths))


@torch.library.register_fake("rnn_ext::gru_pair_infer")
def _gru_pair_infer_fake(input_gates, w_hh, b_hh, h0, lengths):
    return _gru_pair_forward_fake(input_gates, w_hh, b_hh, h0, lengths)[:2]


@torch.library.register_fake("rnn_ext::gru_pair_backward")
def _gru_pair_backward_fake(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths,
                            grad_workspace, grad_h0=True):
    args = (grad_output, grad_h_n, w_hh, h0, output, workspace)
    _check_pair("gru_pair_backward", grad_output=grad_output, output=output, workspace=workspace)
    return _stacked(_gru_backward_fake(*(_half(t, 0) for t in args), lengths,
                                       _half(grad_workspace, 0)))


@torch.library.register_fake("rnn_ext::rnn_pair_forward")
def _rnn_pair_forward_fake(input_gates, w_hh, b_hh, h0, lengths, nonlinearity):
    _check_pair("rnn_pair_forward", input_gates=input_gates, w_hh=w_hh, b_hh=b_hh, h0=h0)
    _check_devices("rnn_pair_forward", lengths, input_gates=input_gates, w_hh=w_hh, b_hh=b_hh,
                   h0=h0)
    return _stacked(_rnn_forward_fake(*(_half(t, 0) for t in (input_gates, w_hh, b_hh, h0)),
                                      lengths, nonlinearity))


@torch.library.register_fake("rnn_ext::rnn_pair_infer")
def _rnn_pair_infer_fake(input_gates, w_hh, b_hh, h0, lengths, nonlinearity):
    return _rnn_pair_forward_fake(input_gates, w_hh, b_hh, h0, lengths, nonlinearity)[:2]


@torch.library.register_fake("rnn_ext::rnn_pair_backward")
def _rnn_pair_backward_fake(grad_output, grad_h_n, w_hh, h0, output, workspace, lengths,
                            grad_workspace, nonlinearity, grad_h0=True):
    args = (grad_output, grad_h_n, w_hh, h0, output, workspace)
    _check_pair("rnn_pair_backward", grad_output=grad_output, output=output, workspace=workspace)
    return _stacked(_rnn_backward_fake(*(_half(t, 0) for t in args), lengths,
                                       _half(grad_workspace, 0), nonlinearity))


# The references of the pair ops (for double backward): the single-direction
# reference per half, stacked.
def _pair_reference(reference_fn, n_stacked):
    def run(*args):
        stacked, rest = args[:n_stacked], args[n_stacked:]
        halves = [reference_fn(*(_half(t, d) for t in stacked), *rest) for d in (0, 1)]
        return tuple(torch.stack(pair) for pair in zip(*halves))
    return run


_lstm_pair_reference = _pair_reference(reference.lstm_reference, 6)
_gru_pair_reference = _pair_reference(reference.gru_reference, 4)
_rnn_pair_reference = _pair_reference(reference.rnn_reference, 4)


_lstm_pair_backward = _lstm_backward_of(_lstm_pair_reference, ops.lstm_pair_backward)
_gru_pair_backward = _gru_backward_of(_gru_pair_reference, ops.gru_pair_backward)
_rnn_pair_backward = _rnn_backward_of(_rnn_pair_reference, ops.rnn_pair_backward)


# The setup_context functions are the single-direction ones: the same
# arguments and results, stacked.
torch.library.register_autograd("rnn_ext::lstm_pair_forward", _lstm_pair_backward,
                                setup_context=_lstm_setup_context)
torch.library.register_autograd("rnn_ext::gru_pair_forward", _gru_pair_backward,
                                setup_context=_gru_setup_context)
torch.library.register_autograd("rnn_ext::rnn_pair_forward", _rnn_pair_backward,
                                setup_context=_rnn_setup_context)
