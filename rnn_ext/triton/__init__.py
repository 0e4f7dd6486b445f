"""Triton kernels for the sequence ops (backend="triton").

    lstm(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths) -> (output, h_n, c_n, workspace)
    gru(input_gates, w_hh, b_hh, h0, lengths) -> (output, h_n, workspace)
    rnn(input_gates, w_hh, b_hh, h0, lengths, nonlinearity) -> (output, h_n, workspace)

Same contract as the compiled ops (see rnn_ext.functional and
rnn_ext.reference).  Forward and backward are Triton kernels in one of two
strategies (see _sequence.py for the crossover rule):

  "persistent"  one launch for the whole sequence, one program per batch
                tile, W_hh kept on chip (small hidden sizes)
  "grid"        one launch for the whole sequence, K programs each owning a
                slice of hidden units (partition::split), a grid barrier per
                step; every hidden size
  "step"        one launch per step: recurrent product + gate epilogue fused
                (an explicit fallback)

`strategy=None` takes the environment variable RNN_EXT_TRITON_STRATEGY
("auto", "persistent", "grid" or "step"), else "auto".  The ops are registered as
torch.ops.rnn_ext.triton_* custom ops (fake + autograd), so torch.compile
traces them and torch.library.opcheck passes.

On the CPU the kernels run only under the Triton interpreter
(TRITON_INTERPRET=1, set before triton is imported), which is how the test
suite runs them on machines without a GPU.
"""
import os

import torch

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _triton_import_error():
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # ImportError, or a broken installation
        return f"triton cannot be imported ({type(e).__name__}: {e})"
    return None


def why_not(device, dtype):
    """None if the Triton kernels can run on this device and dtype, else why not."""
    device = torch.device(device)
    if dtype not in _DTYPES:
        return f"it does not support dtype {dtype}"
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if device.type == "cuda":
        pass
    elif device.type == "cpu":
        if not interpreting:
            return ("its kernels run on CUDA tensors; CPU tensors only under the Triton "
                    "interpreter (set TRITON_INTERPRET=1 before importing triton)")
        if dtype == torch.bfloat16:
            return ("the Triton interpreter cannot run bfloat16 kernels (NumPy has no "
                    "bfloat16 type); use a CUDA device for bfloat16")
    else:
        return f"it runs on CUDA tensors (or on the CPU under TRITON_INTERPRET=1), and these are on {device}"
    reason = _triton_import_error()
    if reason is not None:
        return reason
    if device.type == "cpu":
        from . import _kernels

        if not _kernels.INTERPRETED:
            return ("the Triton kernels were compiled for the GPU: TRITON_INTERPRET=1 was set "
                    "after rnn_ext.triton's kernels had been imported")
    return None


def _lengths(lengths):
    from ..functional import _lengths_tensor  # one conversion rule for every backend

    return _lengths_tensor(lengths)


def _check_rank(op, input_gates, gates):
    # Before the default states are built from its shape; the op checks the rest.
    if input_gates.dim() != 3:
        raise RuntimeError(f"{op}: input_gates must be 3-D [T, B, {gates}], got {input_gates.dim()}-D")


def _strategy(strategy):
    from ._sequence import default_strategy

    return default_strategy() if strategy is None else strategy


def lstm(input_gates, w_hh, b_hh=None, w_hr=None, h0=None, c0=None, lengths=None, strategy=None):
    """One LSTM layer direction with the Triton kernels; returns
    (output, h_n, c_n, workspace).  h0/c0 default to zeros."""
    from .. import _function
    from . import _ops  # registers the ops

    _check_rank("rnn_ext::triton_lstm_forward", input_gates, "4H")
    B, H = input_gates.shape[1], input_gates.shape[2] // 4
    hout = w_hr.shape[0] if w_hr is not None and w_hr.dim() == 2 else H
    h0 = input_gates.new_zeros(B, hout) if h0 is None else h0
    c0 = input_gates.new_zeros(B, H) if c0 is None else c0
    y, h_n, c_n, ws, _ = _function.call(
        torch.ops.rnn_ext.triton_lstm_forward.default, _ops.LSTM_FUNCTION,
        (input_gates, w_hh, b_hh, w_hr, h0, c0, _lengths(lengths), _strategy(strategy)))
    return y, h_n, c_n, ws


def gru(input_gates, w_hh, b_hh=None, h0=None, lengths=None, strategy=None):
    """One GRU layer direction with the Triton kernels; returns
    (output, h_n, workspace).  h0 defaults to zeros."""
    from .. import _function
    from . import _ops  # registers the ops

    _check_rank("rnn_ext::triton_gru_forward", input_gates, "3H")
    if h0 is None:
        h0 = input_gates.new_zeros(input_gates.shape[1], input_gates.shape[2] // 3)
    return tuple(_function.call(
        torch.ops.rnn_ext.triton_gru_forward.default, _ops.GRU_FUNCTION,
        (input_gates, w_hh, b_hh, h0, _lengths(lengths), _strategy(strategy))))


def rnn(input_gates, w_hh, b_hh=None, h0=None, lengths=None, nonlinearity="tanh", strategy=None):
    """One Elman RNN layer direction (nn.RNN's cell, "tanh" or "relu") with
    the Triton kernels; returns (output, h_n, workspace).  h0 defaults to
    zeros."""
    from .. import _function
    from . import _ops  # registers the ops

    _check_rank("rnn_ext::triton_rnn_forward", input_gates, "H")
    if h0 is None:
        h0 = input_gates.new_zeros(input_gates.shape[1], input_gates.shape[2])
    return tuple(_function.call(
        torch.ops.rnn_ext.triton_rnn_forward.default, _ops.RNN_FUNCTION,
        (input_gates, w_hh, b_hh, h0, _lengths(lengths), nonlinearity, _strategy(strategy))))
