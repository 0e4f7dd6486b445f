"""Sequence ops with backend selection: one direction of one layer over a
whole sequence, recurrent part only.  The input projection of all steps
(x W_ih^T + b_ih) is computed by the caller as one large product."""
import torch

from . import backends, reference
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


def lstm(input_gates, w_hh, b_hh=None, w_hr=None, h0=None, c0=None,
         lengths=None, backend="auto"):
    """One LSTM layer direction.

    input_gates: [T, B, 4H] (x W_ih^T + b_ih); w_hh: [4H, H] or [4H, P] with
    w_hr: [P, H]; h0: [B, H or P]; c0: [B, H]; lengths: [B] or None.
    Returns (output [T, B, H or P], h_n, c_n, workspace [T, B, 5H]); the
    workspace holds the activated gates i, f, g, o and the cell state c of
    every step, and is differentiable.
    """
    if input_gates.dim() != 3:
        raise ValueError(f"rnn_ext.lstm: input_gates must be 3-D [T, B, 4H], got shape {tuple(input_gates.shape)}")
    B, H = input_gates.shape[1], input_gates.shape[2] // 4
    hout = w_hr.shape[0] if w_hr is not None else H
    h0 = _state(h0, B, hout, input_gates)
    c0 = _state(c0, B, H, input_gates)
    lengths = _lengths_tensor(lengths)
    chosen = backends.resolve(backend, input_gates.device, input_gates.dtype)
    if chosen == "reference":
        return reference.lstm_reference(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths)
    if chosen == "triton":
        from . import triton as rnn_triton

        return rnn_triton.lstm(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths)
    y, h_n, c_n, ws, _ = ops.lstm_forward(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths)
    return y, h_n, c_n, ws


def gru(input_gates, w_hh, b_hh=None, h0=None, lengths=None, backend="auto"):
    """One GRU layer direction.

    input_gates: [T, B, 3H] (x W_ih^T + b_ih); w_hh: [3H, H]; h0: [B, H].
    Returns (output [T, B, H], h_n, workspace [T, B, 4H]); the workspace holds
    r, z, n and hn = W_hn h + b_hn of every step.
    """
    if input_gates.dim() != 3:
        raise ValueError(f"rnn_ext.gru: input_gates must be 3-D [T, B, 3H], got shape {tuple(input_gates.shape)}")
    B, H = input_gates.shape[1], input_gates.shape[2] // 3
    h0 = _state(h0, B, H, input_gates)
    lengths = _lengths_tensor(lengths)
    chosen = backends.resolve(backend, input_gates.device, input_gates.dtype)
    if chosen == "reference":
        return reference.gru_reference(input_gates, w_hh, b_hh, h0, lengths)
    if chosen == "triton":
        from . import triton as rnn_triton

        return rnn_triton.gru(input_gates, w_hh, b_hh, h0, lengths)
    return ops.gru_forward(input_gates, w_hh, b_hh, h0, lengths)


def rnn(input_gates, w_hh, b_hh=None, h0=None, lengths=None, nonlinearity="tanh",
        backend="auto"):
    """One Elman RNN layer direction (nn.RNN's cell): h' = act(x W_ih^T +
    b_ih + h W_hh^T + b_hh) with act "tanh" or "relu".

    input_gates: [T, B, H] (x W_ih^T + b_ih); w_hh: [H, H]; h0: [B, H].
    Returns (output [T, B, H], h_n, workspace [T, B, H]); the workspace holds
    the activated output of every step in the accumulation type.
    """
    reference.check_nonlinearity(nonlinearity)
    if input_gates.dim() != 3:
        raise ValueError(f"rnn_ext.rnn: input_gates must be 3-D [T, B, H], got shape {tuple(input_gates.shape)}")
    B, H = input_gates.shape[1], input_gates.shape[2]
    h0 = _state(h0, B, H, input_gates)
    lengths = _lengths_tensor(lengths)
    chosen = backends.resolve(backend, input_gates.device, input_gates.dtype)
    if chosen == "reference":
        return reference.rnn_reference(input_gates, w_hh, b_hh, h0, lengths, nonlinearity)
    if chosen == "triton":
        from . import triton as rnn_triton

        return rnn_triton.rnn(input_gates, w_hh, b_hh, h0, lengths, nonlinearity=nonlinearity)
    return ops.rnn_forward(input_gates, w_hh, b_hh, h0, lengths, nonlinearity)
