"""The input checks of the sequence ops: one copy, which every backend passes
through (rnn_ext.functional runs them before dispatching to cpu, cuda,
triton or reference; the Triton custom ops and their fake implementations
run them too).  The C++ ops keep equivalent checks only as guards for
direct op calls (csrc/ops/rnn_ops.cpp); the messages here are the ones
users see.

Each check names the op, the argument and what was expected; a message is
built only when a check fails (a call pays for the comparisons alone, and
torch.compile traces no string formatting).  Sizes are
printed with str(), not int(): under torch.compile a size is symbolic, and
int() would specialise the graph on it (a recompile per sequence length).
"""
import torch

from .reference import acc_dtype


def _shape(s):
    return "[" + ", ".join(str(x) for x in s) + "]"


def _fail(op, msg):
    raise RuntimeError(f"{op}: {msg}")


def check_dense(op, name, t, like):
    if not isinstance(t, torch.Tensor):
        _fail(op, f"{name} must be a tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        _fail(op, f"{name} must be a dense tensor")
    if t.dtype != like.dtype:
        _fail(op, f"{name} has dtype {t.dtype} but input_gates has dtype {like.dtype}; "
                  "all tensors must share one dtype")
    if t.device != like.device:
        _fail(op, f"{name} is on {t.device} but input_gates is on {like.device}")


def check_same(op, name, t, like, shape):
    check_dense(op, name, t, like)
    if tuple(t.shape) != tuple(shape):
        _fail(op, f"expected {name} of shape {_shape(shape)}, got {_shape(t.shape)}")


def check_lengths(op, lengths, B):
    """Lengths as the ops take them: int64, on the CPU, shape [B]."""
    if lengths is None:
        return
    if lengths.device.type != "cpu":
        _fail(op, f"lengths must be a CPU tensor (as for pack_padded_sequence), got one on {lengths.device}")
    if lengths.dtype != torch.int64:
        _fail(op, f"lengths must be int64, got {lengths.dtype}")
    if not (lengths.dim() == 1 and lengths.shape[0] == B):
        _fail(op, f"lengths must have shape [B] = [{B}], got {_shape(lengths.shape)}")


def check_length_values(lengths, T):
    """Every length in [0, T].  Values are only known on real tensors: not
    under torch.compile's fake tensors, where the ops check them when they
    run."""
    if lengths is None or lengths.numel() == 0 or torch.compiler.is_compiling():
        return
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 0 or hi > T:
        b = int(((lengths < 0) | (lengths > T)).nonzero()[0, 0])
        raise RuntimeError(f"rnn_ext: lengths[{b}] = {int(lengths[b])} is out of range [0, T] with T = {T}")


def check_input_gates(op, gx, n_gates, gate_str):
    if not isinstance(gx, torch.Tensor):
        _fail(op, f"input_gates must be a tensor, got {type(gx).__name__}")
    if gx.layout != torch.strided:
        _fail(op, "input_gates must be a dense tensor")
    if gx.dim() != 3:
        _fail(op, f"input_gates must be 3-D [T, B, {gate_str}], got {gx.dim()}-D")
    if not gx.dtype.is_floating_point:
        _fail(op, f"input_gates must be floating point, got dtype {gx.dtype}")
    T, B, G = gx.shape
    # nn's message for a zero-length sequence; empty batches and hidden
    # size 0 are valid (the result is empty).
    if T <= 0:
        _fail(op, f"Expected sequence length to be larger than 0 in RNN, got input_gates of "
                  f"shape {_shape(gx.shape)}")
    if G % n_gates != 0:
        _fail(op, f"last dim of input_gates must be {gate_str}, got {G}")
    return T, B, G // n_gates


def _fits(t, dtype, device, shape):
    """Whether t is a dense tensor of this dtype, device and shape."""
    return (t.dtype == dtype and t.shape == shape and t.device == device
            and t.layout == torch.strided)


def _sequence_gates(gx, n_gates):
    """(T, B, H) when input_gates is a usable [T, B, n_gates*H] tensor, else None."""
    if (isinstance(gx, torch.Tensor) and gx.dim() == 3 and gx.dtype.is_floating_point
            and gx.layout == torch.strided):
        T, B, G = gx.shape
        if T > 0 and G % n_gates == 0:
            return T, B, G // n_gates
    return None


def check_lstm_forward(gx, w_hh, b_hh, w_hr, h0, c0, lengths, op="rnn_ext.lstm"):
    """Returns (T, B, H, P) with P = 0 without projection.  h0 and c0 may be
    None (zeros)."""
    # Every call pays for this one pass of comparisons only; the checks
    # below, which say what is wrong, run when it fails.
    dims = _sequence_gates(gx, 4)
    if dims is not None and w_hr is None and lengths is None:
        T, B, H = dims
        dt, dev = gx.dtype, gx.device
        try:
            if (_fits(w_hh, dt, dev, (4 * H, H)) and (b_hh is None or _fits(b_hh, dt, dev, (4 * H,)))
                    and (h0 is None or _fits(h0, dt, dev, (B, H)))
                    and (c0 is None or _fits(c0, dt, dev, (B, H)))):
                return T, B, H, 0
        except AttributeError:  # not a tensor: the checks below say which
            pass
    T, B, H = check_input_gates(op, gx, 4, "4H")
    hout = H
    if w_hr is not None:
        check_dense(op, "w_hr", w_hr, gx)
        if not (w_hr.dim() == 2 and w_hr.shape[1] == H and w_hr.shape[0] > 0):
            _fail(op, f"expected w_hr of shape [P, H] with H = {H}, got {_shape(w_hr.shape)}")
        hout = w_hr.shape[0]
    check_same(op, "w_hh", w_hh, gx, (4 * H, hout))
    if b_hh is not None:
        check_same(op, "b_hh", b_hh, gx, (4 * H,))
    if h0 is not None:
        check_same(op, "h0", h0, gx, (B, hout))
    if c0 is not None:
        check_same(op, "c0", c0, gx, (B, H))
    check_lengths(op, lengths, B)
    return T, B, H, (w_hr.shape[0] if w_hr is not None else 0)


def check_gru_forward(gx, w_hh, b_hh, h0, lengths, op="rnn_ext.gru"):
    """Returns (T, B, H).  h0 may be None (zeros)."""
    return _check_one_state(gx, w_hh, b_hh, h0, lengths, op, 3, "3H")


def check_rnn_forward(gx, w_hh, b_hh, h0, lengths, op="rnn_ext.rnn"):
    """Returns (T, B, H) of an Elman RNN layer (one gate).  h0 may be None."""
    return _check_one_state(gx, w_hh, b_hh, h0, lengths, op, 1, "H")


def _check_one_state(gx, w_hh, b_hh, h0, lengths, op, n_gates, gate_str):
    """GRU and RNN: a hidden state only, W_hh of [G*H, H]."""
    G = n_gates
    dims = _sequence_gates(gx, G)
    if dims is not None and lengths is None:
        T, B, H = dims
        dt, dev = gx.dtype, gx.device
        try:
            if (_fits(w_hh, dt, dev, (G * H, H)) and (b_hh is None or _fits(b_hh, dt, dev, (G * H,)))
                    and (h0 is None or _fits(h0, dt, dev, (B, H)))):
                return dims
        except AttributeError:
            pass
    T, B, H = check_input_gates(op, gx, G, gate_str)
    check_same(op, "w_hh", w_hh, gx, (G * H, H))
    if b_hh is not None:
        check_same(op, "b_hh", b_hh, gx, (G * H,))
    if h0 is not None:
        check_same(op, "h0", h0, gx, (B, H))
    check_lengths(op, lengths, B)
    return T, B, H


def _check_workspace_grad(op, grad_ws, ws):
    if grad_ws is not None:
        if not (tuple(grad_ws.shape) == tuple(ws.shape) and grad_ws.dtype == ws.dtype
                and grad_ws.device == ws.device):
            _fail(op, "grad_workspace must match workspace")


def check_lstm_backward(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, ws, proj_in,
                        lengths, grad_ws, op):
    if not (y.dim() == 3 and ws.dim() == 3 and ws.shape[2] % 5 == 0):
        _fail(op, "output must be [T, B, H] and workspace [T, B, 5H]")
    T, B, hout = y.shape
    H = ws.shape[2] // 5
    check_same(op, "grad_output", grad_y, y, y.shape)
    check_same(op, "grad_h_n", grad_h_n, y, (B, hout))
    check_same(op, "grad_c_n", grad_c_n, y, (B, H))
    check_same(op, "h0", h0, y, (B, hout))
    check_same(op, "c0", c0, y, (B, H))
    check_same(op, "w_hh", w_hh, y, (4 * H, hout))
    if w_hr is not None:
        check_same(op, "w_hr", w_hr, y, (hout, H))
        check_same(op, "proj_input", proj_in, y, (T, B, H))
    if not (tuple(ws.shape[:2]) == (T, B) and ws.dtype == acc_dtype(y.dtype)
            and ws.device == y.device):
        _fail(op, "workspace does not match output")
    _check_workspace_grad(op, grad_ws, ws)
    check_lengths(op, lengths, B)


def check_gru_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, op):
    _check_one_state_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, op, 3, 4)


def check_rnn_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, op):
    _check_one_state_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, op, 1, 1)


def _check_one_state_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, op, n_gates,
                              ws_blocks):
    if not (y.dim() == 3 and ws.dim() == 3):
        _fail(op, "output must be [T, B, H]")
    T, B, H = y.shape
    check_same(op, "grad_output", grad_y, y, y.shape)
    check_same(op, "grad_h_n", grad_h_n, y, (B, H))
    check_same(op, "h0", h0, y, (B, H))
    check_same(op, "w_hh", w_hh, y, (n_gates * H, H))
    if not (tuple(ws.shape) == (T, B, ws_blocks * H) and ws.dtype == acc_dtype(y.dtype)
            and ws.device == y.device):
        _fail(op, "workspace does not match output")
    _check_workspace_grad(op, grad_ws, ws)
    check_lengths(op, lengths, B)
