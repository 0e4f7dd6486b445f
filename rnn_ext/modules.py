"""Drop-in replacements for nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell
and nn.RNNCell: the same constructor arguments, parameter names, shapes and
initialisation, the same forward inputs and outputs, run by the fused
sequence ops.

They are plain nn.Modules rather than subclasses of nn.LSTM / nn.GRU on
purpose: Dynamo graph-breaks on every instance of those classes, and these
modules must compile with fullgraph=True.
"""
import contextlib
import math
import numbers
import warnings
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn import init
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import backends, functional


def _autocast_dtype(device_type, low_precision_on_cpu):
    """The dtype a module computes in under autocast, as torch.nn does: on
    CUDA every RNN runs in the autocast dtype; on the CPU only nn.LSTM does,
    and nn.GRU and the cells stay in fp32.  None outside autocast."""
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return None
    if device_type == "cpu" and not low_precision_on_cpu:
        return torch.float32
    return torch.get_autocast_dtype(device_type)


def _no_autocast(device_type, cast):
    """Inside, the module casts explicitly; autocast must not re-cast."""
    return torch.autocast(device_type, enabled=False) if cast is not None else contextlib.nullcontext()


def reverse_within_lengths(x, lengths):
    """x [T, B, ...] with each sequence b reversed over its first lengths[b]
    steps; steps past the end stay in place.  Without lengths, a flip."""
    if lengths is None:
        return x.flip(0)
    T, B = x.shape[:2]
    t = torch.arange(T, device=x.device).view(T, 1)
    L = lengths.to(x.device).view(1, B)
    idx = torch.where(t < L, L - 1 - t, t)
    return x.gather(0, idx.view(T, B, *([1] * (x.dim() - 2))).expand_as(x))


class Internals(NamedTuple):
    """What happens inside the cell at every step, for every layer and
    direction, laid out like the output (time-major, or batch-major with
    batch_first; no batch dim for unbatched input; packed input gives padded
    tensors in the input's batch order).  Steps past a sequence's end are 0.

    gates:       [layers*directions, T, B, G, H] activated gates:
                 G = 4 (i, f, g, o) for LSTM, 3 (r, z, n) for GRU,
                 1 (the activated output h) for RNN
    cell_states: [layers*directions, T, B, H] LSTM cell state c_t; None for GRU and RNN

    They are the values the fused kernels keep for backward (no second
    computation), differentiable, in fp32 for fp16/bf16 models.
    """
    gates: torch.Tensor
    cell_states: Optional[torch.Tensor]


class _RNNBase(nn.Module):
    _gates = None  # gate blocks per hidden unit: 4 (LSTM), 3 (GRU) or 1 (RNN)
    mode = None
    _name = None  # the name nn's messages use, when it is not `mode` (RNN)
    _cpu_autocast = False  # whether torch.nn runs this in bf16 under CPU autocast

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None,
                 *, backend="auto"):
        super().__init__()
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             "probability of an element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}")
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if backend not in backends.BACKENDS:
            raise ValueError(f"rnn_ext: unknown backend {backend!r}; choose one of {backends.BACKENDS}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size, self.backend = bidirectional, proj_size, backend

        factory = {"device": device, "dtype": dtype}
        gate_size = self._gates * hidden_size
        real_hidden = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(num_layers):
            for direction in range(self.num_directions):
                layer_input = input_size if layer == 0 else real_hidden * self.num_directions
                suffix = "_reverse" if direction == 1 else ""
                params = [(f"weight_ih_l{layer}{suffix}", (gate_size, layer_input)),
                          (f"weight_hh_l{layer}{suffix}", (gate_size, real_hidden))]
                if bias:
                    params += [(f"bias_ih_l{layer}{suffix}", (gate_size,)),
                               (f"bias_hh_l{layer}{suffix}", (gate_size,))]
                if proj_size > 0:
                    params += [(f"weight_hr_l{layer}{suffix}", (proj_size, hidden_size))]
                for name, shape in params:
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names += [n for n, _ in params]
                self._all_weights.append([n for n, _ in params])
        self.reset_parameters()

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def reset_parameters(self):
        # Same order and bounds as nn.RNNBase: the same seed gives the same weights.
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self):
        """No-op, for code written for cuDNN: the fused ops need no flat buffer."""

    @property
    def all_weights(self):
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def _layer_params(self, layer, direction):
        suffix = "_reverse" if direction == 1 else ""
        get = lambda n: getattr(self, f"{n}_l{layer}{suffix}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr")

    def extra_repr(self):
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        if self.backend != "auto":
            s += ", backend={backend!r}"
        return s.format(**self.__dict__)

    # ------------------------------------------------------------ forward --
    def _check_input(self, x):
        weight = self.weight_ih_l0
        if x.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(f"RNN input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}). "
                             f"Convert input: input.to({weight.dtype}), or convert model: model.to({x.dtype})")
        if x.size(-1) != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. "
                               f"Expected {self.input_size}, got {x.size(-1)}")

    def _check_hidden(self, h, expected, name):
        if tuple(h.shape) != expected:
            raise RuntimeError(f"Expected {name} size {expected}, got {list(h.shape)}")

    def _states(self, hx, batch, x, batched):
        """(h0, c0) as [layers*directions, B, .] tensors (c0 None for GRU)."""
        LD = self.num_layers * self.num_directions
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        lstm = self._gates == 4
        if hx is None:
            h0 = x.new_zeros(LD, batch, real_hidden)
            return h0, (x.new_zeros(LD, batch, self.hidden_size) if lstm else None)
        states = list(hx) if lstm else [hx]
        want = 3 if batched else 2
        if any(s.dim() != want for s in states):
            dims = ", ".join(f"{s.dim()}-D" for s in states)
            what = "hx and cx" if lstm else "hx"
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, {what} should also be {want}-D but got ({dims}) tensor(s)")
        if not batched:
            states = [s.unsqueeze(1) for s in states]
        self._check_hidden(states[0], (LD, batch, real_hidden), "hidden" if not lstm else "hidden[0]")
        if lstm:
            self._check_hidden(states[1], (LD, batch, self.hidden_size), "hidden[1]")
            return states[0], states[1]
        return states[0], None

    def _run(self, x, h0, c0, lengths):
        """All layers and directions over a padded [T, B, I] input.  Returns
        (output, h_n, c_n, workspaces), the workspaces per layer and
        direction in the input's time order."""
        cast = _autocast_dtype(x.device.type, self._cpu_autocast)
        with _no_autocast(x.device.type, cast):
            return self._run_layers(x, h0, c0, lengths, cast if cast is not None else x.dtype)

    def _run_layers(self, x, h0, c0, lengths, dtype):
        to = (lambda t: None if t is None else t.to(dtype))  # noqa: E731
        x, h0, c0 = x.to(dtype), h0.to(dtype), to(c0)
        h_n, c_n, workspaces = [], [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                w_ih, w_hh, b_ih, b_hh, w_hr = map(to, self._layer_params(layer, direction))
                gx = torch.nn.functional.linear(layer_input, w_ih, b_ih)
                if direction == 1:
                    gx = reverse_within_lengths(gx, lengths)
                if self._gates == 4:
                    y, h, c, ws = functional.lstm(gx, w_hh, b_hh, w_hr, h0[k], c0[k],
                                                  lengths=lengths, backend=self.backend)
                    c_n.append(c)
                elif self._gates == 1:
                    y, h, ws = functional.rnn(gx, w_hh, b_hh, h0[k], lengths=lengths,
                                              nonlinearity=self.nonlinearity, backend=self.backend)
                else:
                    y, h, ws = functional.gru(gx, w_hh, b_hh, h0[k], lengths=lengths,
                                              backend=self.backend)
                if direction == 1:
                    y = reverse_within_lengths(y, lengths)
                    ws = reverse_within_lengths(ws, lengths)
                workspaces.append(ws)
                outputs.append(y)
                h_n.append(h)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = torch.nn.functional.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(h_n), (torch.stack(c_n) if c_n else None), workspaces

    def _internals(self, workspaces):
        """Internals [LD, T, B, ...] from the kernels' workspaces [T, B, k*H]."""
        H = self.hidden_size
        ws = torch.stack(workspaces)  # [LD, T, B, 5H (LSTM) or 4H (GRU)]
        LD, T, B = ws.shape[:3]
        gates = ws[..., :self._gates * H].unflatten(-1, (self._gates, H))
        cells = ws[..., 4 * H:5 * H] if self._gates == 4 else None
        return Internals(gates, cells)

    def forward(self, input, hx=None):
        output, state, _ = self._forward(input, hx, False)
        return output, state

    def forward_with_internals(self, input, hx=None):
        """Like forward, and also returns Internals: the gate activations
        (and LSTM cell states) of every step, layer and direction."""
        return self._forward(input, hx, True)

    def _forward(self, input, hx, want_internals):
        name = self._name or self.mode
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self._check_input(data)
            if data.dim() != 2:
                raise RuntimeError(f"input must have 2 dimensions, got {data.dim()}")
            # Padded in sorted order (longest first): the kernels then shrink
            # each step's work to the sequences still running.
            x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
            if hx is not None:
                hx = tuple(hx) if self._gates == 4 else hx
            h0, c0 = self._states(hx, x.size(1), x, True)
            if sorted_indices is not None:
                h0 = h0.index_select(1, sorted_indices)
                c0 = c0.index_select(1, sorted_indices) if c0 is not None else None
            y, h_n, c_n, ws = self._run(x, h0, c0, lengths)
            out = PackedSequence(pack_padded_sequence(y, lengths).data, batch_sizes,
                                 sorted_indices, unsorted_indices)
            inside = self._internals(ws) if want_internals else None
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
                c_n = c_n.index_select(1, unsorted_indices) if c_n is not None else None
                if inside is not None:
                    inside = Internals(*(None if t is None else t.index_select(2, unsorted_indices)
                                         for t in inside))
            return out, ((h_n, c_n) if self._gates == 4 else h_n), inside

        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        self._check_input(input)
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        h0, c0 = self._states(hx, input.size(1), input, batched)
        y, h_n, c_n, ws = self._run(input, h0, c0, None)
        inside = self._internals(ws) if want_internals else None
        if not batched:
            y, h_n = y.squeeze(1), h_n.squeeze(1)
            c_n = c_n.squeeze(1) if c_n is not None else None
            if inside is not None:
                inside = Internals(*(None if t is None else t.squeeze(2) for t in inside))
        elif self.batch_first:
            y = y.transpose(0, 1)
            if inside is not None:
                inside = Internals(*(None if t is None else t.transpose(1, 2) for t in inside))
        return y, ((h_n, c_n) if self._gates == 4 else h_n), inside


class LSTM(_RNNBase):
    """Drop-in for torch.nn.LSTM, run by rnn_ext's fused kernels.

    Takes nn.LSTM's arguments, plus `backend`: "auto" (default), "cpu",
    "cuda", "triton" or "reference"."""
    _gates = 4
    mode = "LSTM"
    _cpu_autocast = True


class GRU(_RNNBase):
    """Drop-in for torch.nn.GRU, run by rnn_ext's fused kernels (same
    formula as nn.GRU: the reset gate multiplies W_hn h + b_hn)."""
    _gates = 3
    mode = "GRU"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto"):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend)


# ------------------------------------------------------------------ cells --
class _CellBase(nn.Module):
    _gates = None
    mode = None
    _cpu_autocast = False  # whether torch.nn runs this in bf16 under CPU autocast

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__()
        if backend not in backends.BACKENDS:
            raise ValueError(f"rnn_ext: unknown backend {backend!r}; choose one of {backends.BACKENDS}")
        self.input_size, self.hidden_size, self.bias, self.backend = input_size, hidden_size, bias, backend
        factory = {"device": device, "dtype": dtype}
        G = self._gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty((G, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((G, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G, **factory))
            self.bias_hh = nn.Parameter(torch.empty(G, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self):
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def extra_repr(self):
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        return s.format(**self.__dict__)

    def _check(self, input, states):
        name = self.mode
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        for k, s in enumerate(states):
            if s is not None and s.dim() not in (1, 2):
                what = f"hx[{k}]" if len(states) > 1 else "hidden"
                raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {s.dim()}D instead")
        if input.size(-1) != self.input_size:
            raise RuntimeError(f"{name}: input has inconsistent input_size: got {input.size(-1)} "
                               f"expected {self.input_size}")
        batch = input.size(0) if input.dim() == 2 else None
        for k, s in enumerate(states):
            if s is None:
                continue
            if s.size(-1) != self.hidden_size or (batch is not None and s.dim() == 2 and s.size(0) != batch):
                raise RuntimeError(f"{name}: hidden state {k} has shape {list(s.shape)}; expected "
                                   f"[{'' if batch is None else f'{batch}, '}{self.hidden_size}]")
            if s.dim() != input.dim():
                raise RuntimeError(f"{name}: input is {input.dim()}-D but hidden state {k} is {s.dim()}-D")

    def _step(self, input, states):
        """One fused step: states are (h, c) for LSTMCell, (h,) for GRUCell
        and RNNCell."""
        cast = _autocast_dtype(input.device.type, self._cpu_autocast)
        dtype = cast if cast is not None else input.dtype
        to = (lambda t: None if t is None else t.to(dtype))  # noqa: E731
        with _no_autocast(input.device.type, cast):
            gx = torch.nn.functional.linear(input.to(dtype), to(self.weight_ih), to(self.bias_ih))
            gx = gx.unsqueeze(0)
            if self._gates == 4:
                _, h, c, _ = functional.lstm(gx, to(self.weight_hh), to(self.bias_hh), None,
                                             to(states[0]), to(states[1]), backend=self.backend)
                return h, c
            if self._gates == 1:
                _, h, _ = functional.rnn(gx, to(self.weight_hh), to(self.bias_hh), to(states[0]),
                                         nonlinearity=self.nonlinearity, backend=self.backend)
                return (h,)
            _, h, _ = functional.gru(gx, to(self.weight_hh), to(self.bias_hh), to(states[0]),
                                     backend=self.backend)
            return (h,)


class LSTMCell(_CellBase):
    """Drop-in for torch.nn.LSTMCell: one step, pointwise part fused."""
    _gates = 4
    mode = "LSTMCell"

    def forward(self, input, hx=None):
        self._check(input, tuple(hx) if hx is not None else ())
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
            hx = tuple(s.unsqueeze(0) for s in hx) if hx is not None else None
        if hx is None:
            zeros = input.new_zeros(input.size(0), self.hidden_size)
            hx = (zeros, zeros)
        h, c = self._step(input, hx)
        if not batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c


class GRUCell(_CellBase):
    """Drop-in for torch.nn.GRUCell: one step, pointwise part fused."""
    _gates = 3
    mode = "GRUCell"

    def forward(self, input, hx=None):
        self._check(input, (hx,))
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
            hx = hx.unsqueeze(0) if hx is not None else None
        if hx is None:
            hx = input.new_zeros(input.size(0), self.hidden_size)
        (h,) = self._step(input, (hx,))
        return h if batched else h.squeeze(0)


class RNN(_RNNBase):
    """Drop-in for torch.nn.RNN (Elman RNN, nonlinearity "tanh" or "relu"),
    run by rnn_ext's fused kernels.  Takes nn.RNN's arguments in nn.RNN's
    order, plus `backend`."""
    _gates = 1
    _name = "RNN"
    _cpu_autocast = True

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 backend="auto"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend)
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"


class RNNCell(_CellBase):
    """Drop-in for torch.nn.RNNCell: one Elman step ("tanh" or "relu"),
    pointwise part fused."""
    _gates = 1
    mode = "RNNCell"
    _cpu_autocast = True

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None, *, backend="auto"):
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, device, dtype, backend=backend)

    def extra_repr(self):
        s = super().extra_repr()
        return s + (f", nonlinearity={self.nonlinearity}" if self.nonlinearity != "tanh" else "")

    def forward(self, input, hx=None):
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        # One state, as GRUCell: the same shape handling.
        return GRUCell.forward(self, input, hx)


# ---------------------------------------------------------------- convert --
_TO_EXT = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell,
           nn.RNNCell: RNNCell}
_TO_TORCH = {v: k for k, v in _TO_EXT.items()}
_CONFIG = {
    LSTM: ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
           "bidirectional", "proj_size"),
    GRU: ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
          "bidirectional"),
    RNN: ("input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first",
          "dropout", "bidirectional"),
    LSTMCell: ("input_size", "hidden_size", "bias"),
    GRUCell: ("input_size", "hidden_size", "bias"),
    RNNCell: ("input_size", "hidden_size", "bias", "nonlinearity"),
}


def _swap(module, target_cls, ext_cls, **extra):
    """A `target_cls` module with `module`'s configuration that holds the
    very same Parameter objects (so optimizers and tied weights still see
    them), built on the meta device so no random initialisation runs."""
    config = {k: getattr(module, k) for k in _CONFIG[ext_cls]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropout warning was given once already
        new = target_cls(**config, device="meta", **extra)
    for name, param in module.named_parameters(recurse=False):
        setattr(new, name, param)
    new.train(module.training)
    return new


def _replace(module, mapping, make):
    if type(module) in mapping:
        return make(module)
    for name, child in module.named_children():
        new = _replace(child, mapping, make)
        if new is not child:
            setattr(module, name, new)
    return module


def convert(module, backend="auto"):
    """Replace every nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell and
    nn.RNNCell inside `module` (or `module` itself) by its rnn_ext
    counterpart, sharing the same parameters (so weights, device and dtype
    are kept).  Returns the converted module; submodules are replaced in
    place."""
    if backend not in backends.BACKENDS:
        raise ValueError(f"rnn_ext: unknown backend {backend!r}; choose one of {backends.BACKENDS}")
    return _replace(module, _TO_EXT,
                    lambda m: _swap(m, _TO_EXT[type(m)], _TO_EXT[type(m)], backend=backend))


def to_torch(module):
    """The reverse of convert(): rnn_ext modules back to torch.nn ones."""
    def make(m):
        new = _swap(m, _TO_TORCH[type(m)], type(m))
        if isinstance(new, nn.RNNBase):
            new._init_flat_weights()
        return new
    return _replace(module, _TO_TORCH, make)
