"""Sequence ops with backend selection: one direction of one layer over a
whole sequence, recurrent part only.  The input projection of all steps
(x W_ih^T + b_ih) is computed by the caller as one large product."""
import torch

from . import _checks, _function, _ops, backends, reference
from ._ops import ops


def _lengths_tensor(lengths):
    """Lengths as the ops take them: an int64 CPU tensor (as for
    pack_padded_sequence), so the host knows how many rows each step runs."""
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise TypeError(f"rnn_ext: lengths must hold integers, got dtype {lengths.dtype}")
    return lengths.to(device="cpu", dtype=torch.int64)


def _state(state, batch, size, like):
    return like.new_zeros(batch, size) if state is None else state


def _inference(need_workspace, *tensors):
    """Whether the compiled kernels may skip the workspace: nobody asked for
    it and no gradient will flow back through this call."""
    if need_workspace:
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(t is not None and t.requires_grad for t in tensors)


_LSTM_FUNCTION = _function.autograd_function("LSTMForward", ops.lstm_forward.default,
                                             _ops._lstm_setup_context, _ops._lstm_backward)
_GRU_FUNCTION = _function.autograd_function("GRUForward", ops.gru_forward.default,
                                            _ops._gru_setup_context, _ops._gru_backward)
_RNN_FUNCTION = _function.autograd_function("RNNForward", ops.rnn_forward.default,
                                            _ops._rnn_setup_context, _ops._rnn_backward)


def _resolve(backend, input_gates, cell, hidden_size, batch):
    """(backend, Triton strategy) for this call: `backend`, or auto's choice
    from its table (rnn_ext.backends)."""
    chosen, strategy, _ = backends.resolve_choice(backend, input_gates.device, input_gates.dtype,
                                                  cell, hidden_size, batch)
    if chosen == "reference" and torch.jit.is_tracing():
        raise RuntimeError(
            "rnn_ext: backend 'reference' cannot be traced by torch.jit.trace: it is a Python loop "
            "over the time steps, which a trace would record for this one sequence length only. "
            "Use backend 'cpu' (or 'auto'), or torch.compile.")
    return chosen, strategy


def lstm(input_gates, w_hh, b_hh=None, w_hr=None, h0=None, c0=None,
         lengths=None, backend="auto", need_workspace=True):
    """One LSTM layer direction.

    input_gates: [T, B, 4H] (x W_ih^T + b_ih); w_hh: [4H, H] or [4H, P] with
    w_hr: [P, H]; h0: [B, H or P]; c0: [B, H]; lengths: [B] or None.
    Returns (output [T, B, H or P], h_n, c_n, workspace [T, B, 5H]); the
    workspace holds the activated gates i, f, g, o and the cell state c of
    every step, and is differentiable.  With need_workspace=False, a call
    that needs no gradient may return None for it and skip writing it (the
    compiled kernels then keep only what the next step reads).

    Every backend runs the same input checks (rnn_ext._checks) first.  An
    empty batch (B = 0) or hidden size 0 gives empty results, as in torch.nn.
    """
    lengths = _lengths_tensor(lengths)
    T, B, H, P = _checks.check_lstm_forward(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths)
    _checks.check_length_values(lengths, T)
    hout = P or H
    h0 = _state(h0, B, hout, input_gates)
    c0 = _state(c0, B, H, input_gates)
    if B == 0 or H == 0:
        return _empty(input_gates, (h0, c0), hout, 5 * H)
    chosen, strategy = _resolve(backend, input_gates, "lstm", H, B)
    if chosen == "reference":
        return reference.lstm_reference(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths)
    if chosen == "triton":
        from . import triton as rnn_triton

        return rnn_triton.lstm(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths, strategy=strategy)
    if _inference(need_workspace, input_gates, w_hh, b_hh, w_hr, h0, c0):
        return (*_function.call_without_grad(ops.lstm_infer.default,
                                             (input_gates, w_hh, b_hh, w_hr, h0, c0, lengths)), None)
    y, h_n, c_n, ws, _ = _function.call(ops.lstm_forward.default, _LSTM_FUNCTION,
                                        (input_gates, w_hh, b_hh, w_hr, h0, c0, lengths))
    return y, h_n, c_n, ws


def gru(input_gates, w_hh, b_hh=None, h0=None, lengths=None, backend="auto",
        need_workspace=True):
    """One GRU layer direction.

    input_gates: [T, B, 3H] (x W_ih^T + b_ih); w_hh: [3H, H]; h0: [B, H].
    Returns (output [T, B, H], h_n, workspace [T, B, 4H]); the workspace holds
    r, z, n and hn = W_hn h + b_hn of every step (None with
    need_workspace=False where no gradient is needed, as for lstm).
    """
    lengths = _lengths_tensor(lengths)
    T, B, H = _checks.check_gru_forward(input_gates, w_hh, b_hh, h0, lengths)
    _checks.check_length_values(lengths, T)
    h0 = _state(h0, B, H, input_gates)
    if B == 0 or H == 0:
        return _empty(input_gates, (h0,), H, 4 * H)
    chosen, strategy = _resolve(backend, input_gates, "gru", H, B)
    if chosen == "reference":
        return reference.gru_reference(input_gates, w_hh, b_hh, h0, lengths)
    if chosen == "triton":
        from . import triton as rnn_triton

        return rnn_triton.gru(input_gates, w_hh, b_hh, h0, lengths, strategy=strategy)
    if _inference(need_workspace, input_gates, w_hh, b_hh, h0):
        return (*_function.call_without_grad(ops.gru_infer.default,
                                             (input_gates, w_hh, b_hh, h0, lengths)), None)
    return _function.call(ops.gru_forward.default, _GRU_FUNCTION,
                          (input_gates, w_hh, b_hh, h0, lengths))


def rnn(input_gates, w_hh, b_hh=None, h0=None, lengths=None, nonlinearity="tanh",
        backend="auto", need_workspace=True):
    """One Elman RNN layer direction (nn.RNN's cell): h' = act(x W_ih^T +
    b_ih + h W_hh^T + b_hh) with act "tanh" or "relu".

    input_gates: [T, B, H] (x W_ih^T + b_ih); w_hh: [H, H]; h0: [B, H].
    Returns (output [T, B, H], h_n, workspace [T, B, H]); the workspace holds
    the activated output of every step in the accumulation type (None with
    need_workspace=False where no gradient is needed, as for lstm).
    """
    reference.check_nonlinearity(nonlinearity)
    lengths = _lengths_tensor(lengths)
    T, B, H = _checks.check_rnn_forward(input_gates, w_hh, b_hh, h0, lengths)
    _checks.check_length_values(lengths, T)
    h0 = _state(h0, B, H, input_gates)
    if B == 0 or H == 0:
        return _empty(input_gates, (h0,), H, H)
    chosen, _ = _resolve(backend, input_gates, "rnn", H, B)
    if chosen == "reference":
        return reference.rnn_reference(input_gates, w_hh, b_hh, h0, lengths, nonlinearity)
    if chosen == "triton":
        from . import triton as rnn_triton

        return rnn_triton.rnn(input_gates, w_hh, b_hh, h0, lengths, nonlinearity=nonlinearity)
    if _inference(need_workspace, input_gates, w_hh, b_hh, h0):
        return (*_function.call_without_grad(ops.rnn_infer.default,
                                             (input_gates, w_hh, b_hh, h0, lengths, nonlinearity)), None)
    return _function.call(ops.rnn_forward.default, _RNN_FUNCTION,
                          (input_gates, w_hh, b_hh, h0, lengths, nonlinearity))


def _empty(input_gates, states, hout, ws_width):
    """The results of an empty batch or of hidden size 0 (every tensor has
    no elements), as torch.nn gives them: attached to the graph of the
    inputs, so that backward runs (and gives empty or zero gradients)."""
    T, B, _ = input_gates.shape
    nothing = input_gates[..., :0].sum(-1, keepdim=True)  # [T, B, 1] zeros, in the graph
    output = nothing.expand(T, B, hout) * 0
    workspace = input_gates.new_zeros(T, B, ws_width, dtype=reference.acc_dtype(input_gates.dtype))
    return (output, *(s + nothing[0] for s in states), workspace)


# ------------------------------------------------------------ pair ops ----
# Both directions of a bidirectional layer in one call: every argument but
# lengths stacked on a leading dimension of 2 (direction 0, then direction
# 1, whose input gates the caller has already reversed within lengths, as
# the modules do), the results stacked the same way.  The compiled cpu and
# cuda backends run them in one op call (rnn_ext::*_pair_forward), so that
# the persistent executors may run both directions in one launch or one team
# of workers; the reference and Triton backends run two single-direction
# calls.

_LSTM_PAIR_FUNCTION = _function.autograd_function(
    "LSTMPairForward", ops.lstm_pair_forward.default, _ops._lstm_setup_context,
    _ops._lstm_pair_backward)
_GRU_PAIR_FUNCTION = _function.autograd_function(
    "GRUPairForward", ops.gru_pair_forward.default, _ops._gru_setup_context,
    _ops._gru_pair_backward)
_RNN_PAIR_FUNCTION = _function.autograd_function(
    "RNNPairForward", ops.rnn_pair_forward.default, _ops._rnn_setup_context,
    _ops._rnn_pair_backward)

_COMPILED = ("cpu", "cuda")


def _check_pair(op, **tensors):
    for name, t in tensors.items():
        if t is not None and (not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[0] != 2):
            shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise RuntimeError(f"{op}: {name} must have a leading dimension of 2 (both directions "
                             f"stacked: direction 0, then direction 1), got {shape}")


def _half(t, d):
    return None if t is None else t[d]


def _each_direction(fn, stacked, **kwargs):
    """fn on each half of the stacked arguments, the results stacked (None
    stays None: a workspace that was not kept)."""
    halves = [fn(*(_half(t, d) for t in stacked), **kwargs) for d in (0, 1)]
    return tuple(None if a is None else torch.stack((a, b)) for a, b in zip(*halves))


def pair_runs_compiled(backend, input_gates, cell, hidden_size, batch):
    """Whether a pair call with these arguments runs on the compiled cpu or
    cuda ops (one op call for both directions); else it runs two
    single-direction calls.  input_gates: one direction's [T, B, G*H]."""
    if batch == 0 or hidden_size == 0:
        return False
    return _resolve(backend, input_gates, cell, hidden_size, batch)[0] in _COMPILED


def lstm_pair(input_gates, w_hh, b_hh=None, w_hr=None, h0=None, c0=None, lengths=None,
              backend="auto", need_workspace=True):
    """Both directions of a bidirectional LSTM layer: lstm() on each half of
    arguments stacked on a leading dimension of 2 (input_gates [2, T, B, 4H],
    w_hh [2, 4H, H or P], b_hh [2, 4H], w_hr [2, P, H], h0 [2, B, H or P],
    c0 [2, B, H]; lengths [B] shared).  Direction 1's input gates come
    reversed within lengths, and its results are in that order too.  Returns
    (output [2, T, B, H or P], h_n, c_n, workspace [2, T, B, 5H] or None)."""
    op = "rnn_ext.lstm_pair"
    _check_pair(op, input_gates=input_gates, w_hh=w_hh, b_hh=b_hh, w_hr=w_hr, h0=h0, c0=c0)
    lengths = _lengths_tensor(lengths)
    T, B, H, P = _checks.check_lstm_forward(input_gates[0], w_hh[0], _half(b_hh, 0),
                                            _half(w_hr, 0), _half(h0, 0), _half(c0, 0),
                                            lengths, op)
    if not pair_runs_compiled(backend, input_gates[0], "lstm", H, B):
        return _each_direction(
            lambda gx, w, b, wr, h, c: lstm(gx, w, b, wr, h, c, lengths=lengths, backend=backend,
                                            need_workspace=need_workspace),
            (input_gates, w_hh, b_hh, w_hr, h0, c0))
    _checks.check_length_values(lengths, T)
    h0 = input_gates.new_zeros(2, B, P or H) if h0 is None else h0
    c0 = input_gates.new_zeros(2, B, H) if c0 is None else c0
    args = (input_gates, w_hh, b_hh, w_hr, h0, c0, lengths)
    if _inference(need_workspace, input_gates, w_hh, b_hh, w_hr, h0, c0):
        return (*_function.call_without_grad(ops.lstm_pair_infer.default, args), None)
    y, h_n, c_n, ws, _ = _function.call(ops.lstm_pair_forward.default, _LSTM_PAIR_FUNCTION, args)
    return y, h_n, c_n, ws


def gru_pair(input_gates, w_hh, b_hh=None, h0=None, lengths=None, backend="auto",
             need_workspace=True):
    """Both directions of a bidirectional GRU layer, stacked as for
    lstm_pair: input_gates [2, T, B, 3H], w_hh [2, 3H, H], b_hh [2, 3H],
    h0 [2, B, H].  Returns (output [2, T, B, H], h_n, workspace or None)."""
    op = "rnn_ext.gru_pair"
    _check_pair(op, input_gates=input_gates, w_hh=w_hh, b_hh=b_hh, h0=h0)
    lengths = _lengths_tensor(lengths)
    T, B, H = _checks.check_gru_forward(input_gates[0], w_hh[0], _half(b_hh, 0), _half(h0, 0),
                                        lengths, op)
    if not pair_runs_compiled(backend, input_gates[0], "gru", H, B):
        return _each_direction(
            lambda gx, w, b, h: gru(gx, w, b, h, lengths=lengths, backend=backend,
                                    need_workspace=need_workspace),
            (input_gates, w_hh, b_hh, h0))
    _checks.check_length_values(lengths, T)
    h0 = input_gates.new_zeros(2, B, H) if h0 is None else h0
    args = (input_gates, w_hh, b_hh, h0, lengths)
    if _inference(need_workspace, input_gates, w_hh, b_hh, h0):
        return (*_function.call_without_grad(ops.gru_pair_infer.default, args), None)
    return _function.call(ops.gru_pair_forward.default, _GRU_PAIR_FUNCTION, args)


def rnn_pair(input_gates, w_hh, b_hh=None, h0=None, lengths=None, nonlinearity="tanh",
             backend="auto", need_workspace=True):
    """Both directions of a bidirectional Elman RNN layer, stacked as for
    lstm_pair: input_gates [2, T, B, H], w_hh [2, H, H], b_hh [2, H],
    h0 [2, B, H].  Returns (output [2, T, B, H], h_n, workspace or None)."""
    op = "rnn_ext.rnn_pair"
    reference.check_nonlinearity(nonlinearity)
    _check_pair(op, input_gates=input_gates, w_hh=w_hh, b_hh=b_hh, h0=h0)
    lengths = _lengths_tensor(lengths)
    T, B, H = _checks.check_rnn_forward(input_gates[0], w_hh[0], _half(b_hh, 0), _half(h0, 0),
                                        lengths, op)
    if not pair_runs_compiled(backend, input_gates[0], "rnn", H, B):
        return _each_direction(
            lambda gx, w, b, h: rnn(gx, w, b, h, lengths=lengths, nonlinearity=nonlinearity,
                                    backend=backend, need_workspace=need_workspace),
            (input_gates, w_hh, b_hh, h0))
    _checks.check_length_values(lengths, T)
    h0 = input_gates.new_zeros(2, B, H) if h0 is None else h0
    args = (input_gates, w_hh, b_hh, h0, lengths, nonlinearity)
    if _inference(need_workspace, input_gates, w_hh, b_hh, h0):
        return (*_function.call_without_grad(ops.rnn_pair_infer.default, args), None)
    return _function.call(ops.rnn_pair_forward.default, _RNN_PAIR_FUNCTION, args)
