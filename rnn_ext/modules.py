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
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _function, _layer, backends, functional
from ._ops import ops as _ops
from ._projection import input_projection


def _autocast_dtype(device, low_precision_on_cpu):
    """The dtype a module computes in under autocast, as torch.nn does: on
    CUDA every RNN runs in the autocast dtype; on the CPU only nn.LSTM does,
    and nn.GRU and the cells stay in fp32.  None outside autocast."""
    if not torch._C._is_any_autocast_enabled():
        return None
    device_type = device.type
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return None
    if device_type == "cpu" and not low_precision_on_cpu:
        return torch.float32
    return torch.get_autocast_dtype(device_type)


def _no_autocast(device_type, cast):
    """Inside, the module casts explicitly; autocast must not re-cast."""
    return torch.autocast(device_type, enabled=False) if cast is not None else contextlib.nullcontext()


_MISSING = object()


def _weight(module, name):
    """module.<name>: a parameter straight from the module's parameter dict
    (nn.Module.__getattr__ costs about a microsecond a call, and a call of a
    module reads every weight); anything else that holds the name (a
    parametrization, weight_norm's recomputed tensor) through getattr."""
    w = module._parameters.get(name, _MISSING)
    return getattr(module, name) if w is _MISSING else w


def _let_dynamo_break_at_pad_packed_sequence():
    """torch.compile of a model that unpacks a PackedSequence
    (pad_packed_sequence) crashes in Dynamo ("RuntimeError when making fake
    tensor call"): the unpacking reads batch_sizes on the host, which fake
    tensors do not hold, and batch_sizes always comes from outside the graph
    (Dynamo graph-breaks at pack_padded_sequence).  nn's RNNs hide this by
    sending the whole calling frame to eager mode; rnn_ext's modules are
    traced, so the user's pad_packed_sequence after them is too.  Mark it as
    Dynamo marks pack_padded_sequence: a graph break, never traced.  (Only
    changes code that would crash.)"""
    try:
        from torch._dynamo import trace_rules
        from torch._dynamo.variables import SkipFunctionVariable

        name = "torch.nn.utils.rnn.pad_packed_sequence"
        if trace_rules.manual_torch_name_rule_map.get(name) is not SkipFunctionVariable:
            trace_rules.manual_torch_name_rule_map[name] = SkipFunctionVariable
            trace_rules.clear_lru_cache()
    except Exception:  # a PyTorch without these internals: nothing to do
        pass


_let_dynamo_break_at_pad_packed_sequence()


class _Packing:
    """How packed data (a PackedSequence's rows, in sorted batch order) sits
    in the padded [T, B, ...] tensor the kernels run on, with pad() and
    pack() between the two.  On the CPU they are one index_select each way
    on the row positions t*B + b: pad_packed_sequence's backward took 15 ms
    for a [544, 1536] gate tensor (T=16, B=64), longer than the GRU layer
    itself.  Elsewhere they are torch's pad/pack functions."""

    def __init__(self, batch_sizes, device):
        self.batch_sizes = batch_sizes
        T = len(batch_sizes)
        B = int(batch_sizes[0]) if T else 0
        self.T, self.B = T, B
        # lengths[b]: the steps with more than b sequences running.
        self.lengths = (batch_sizes.unsqueeze(1) > torch.arange(B)).sum(0)
        self.rows = None
        if device.type == "cpu":
            step_starts = torch.cumsum(batch_sizes, 0) - batch_sizes
            n = torch.arange(int(batch_sizes.sum()))
            within = n - torch.repeat_interleave(step_starts, batch_sizes)
            self.rows = torch.repeat_interleave(torch.arange(T) * B, batch_sizes) + within
            # For pad(): padded row r takes packed row source[r], the padding
            # rows an appended zero row.
            self.source = torch.full((T * B,), len(n), dtype=torch.long)
            self.source[self.rows] = n

    def pad(self, data):
        if self.rows is None:
            return pad_packed_sequence(PackedSequence(data, self.batch_sizes), total_length=self.T)[0]
        zero = data.new_zeros(1, *data.shape[1:])
        return torch.cat([data, zero]).index_select(0, self.source).view(self.T, self.B, *data.shape[1:])

    def pack(self, padded):
        if self.rows is None:
            return pack_padded_sequence(padded, self.lengths).data
        return padded.reshape(self.T * self.B, *padded.shape[2:]).index_select(0, self.rows)


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


def _check_config(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size):
    """nn.RNNBase's constructor checks, with its messages."""
    if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
        raise ValueError("dropout should be a number in range [0, 1] representing the "
                         "probability of an element being zeroed")
    if dropout > 0 and num_layers == 1:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                      "non-zero dropout expects num_layers greater than 1, but got "
                      f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
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


class _RNNBase(nn.Module):
    """What LSTM, GRU and RNN share.  A subclass sets the class attributes below
    and, where its recurrence differs, overrides _recurrence; everything else
    (arguments, parameters, checks, layers, directions, packing, dropout)
    is common."""
    _gates = None          # gate blocks per hidden unit: 4 (LSTM), 3 (GRU), 1 (RNN)
    _cell = None           # the cell's name for backend selection: "lstm", "gru", "rnn"
    _has_cell_state = False  # whether the state is (h, c), as for LSTM
    mode = None            # nn's name for the module, used in messages
    _message_name = None   # the name in messages where it is not `mode` (RNN)
    _cpu_autocast = False  # whether torch.nn runs this in bf16 under CPU autocast

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None,
                 *, backend="auto"):
        super().__init__()
        _check_config(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size)
        _check_backend(backend)
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
        self._init_layout()
        self.reset_parameters()

    def _init_layout(self):
        """Per layer and direction, the names of (w_ih, w_hh, b_ih, b_hh,
        w_hr), None where absent: looked up once, not at every call."""
        layout = []
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                suffix = "_reverse" if direction == 1 else ""
                layout.append(tuple(
                    f"{w}_l{layer}{suffix}" if use else None
                    for w, use in (("weight_ih", True), ("weight_hh", True), ("bias_ih", self.bias),
                                   ("bias_hh", self.bias), ("weight_hr", self.proj_size > 0))))
        self._layout = layout

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def reset_parameters(self):
        # Same order and bounds as nn.RNNBase: the same seed gives the same weights.
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    # nn.RNNBase's weight attributes, which code written for nn (weight_norm,
    # parametrize, torch.func.functional_call, utilities) relies on.  There
    # is no flat cuDNN buffer: the list always holds the current tensors,
    # whatever replaced a parameter (a parametrization, weight_norm's
    # recomputed weight, functional_call's tensors).
    @property
    def _flat_weights(self):
        return [getattr(self, wn) if hasattr(self, wn) else None for wn in self._flat_weights_names]

    def _init_flat_weights(self):
        """Nothing to do: _flat_weights is always current."""

    def flatten_parameters(self):
        """No-op, as nn's is off cuDNN: the fused ops need no flat buffer."""

    @property
    def all_weights(self):
        return [[getattr(self, name) for name in names] for names in self._all_weights]

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
        weight = _weight(self, "weight_ih_l0")
        if x.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(f"RNN input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}). "
                             f"Convert input: input.to({weight.dtype}), or convert model: model.to({x.dtype})")
        if x.size(-1) != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. "
                               f"Expected {self.input_size}, got {x.size(-1)}")

    def _check_hidden(self, h, expected, name, x):
        if tuple(h.shape) != expected:
            raise RuntimeError(f"Expected {name} size {expected}, got {list(h.shape)}")
        if h.dtype != x.dtype and not torch._C._is_any_autocast_enabled():
            raise RuntimeError(f"{self._message_name or self.mode}: {name} has dtype {h.dtype} but the input has dtype "
                               f"{x.dtype}; input, hidden state and weights must share one dtype")

    def _states(self, hx, batch, x, batched):
        """(h0, c0) as [layers*directions, B, .] tensors (c0 None without a
        cell state)."""
        LD = self.num_layers * self.num_directions
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        lstm = self._has_cell_state
        if hx is None:
            h0 = x.new_zeros(LD, batch, real_hidden)
            return h0, (x.new_zeros(LD, batch, self.hidden_size) if lstm else None)
        states = [hx[0], hx[1]] if lstm else [hx]
        want = 3 if batched else 2
        if any(s.dim() != want for s in states):
            dims = ", ".join(f"{s.dim()}-D" for s in states)
            what = "hx and cx" if lstm else "hx"
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, {what} should also be {want}-D but got ({dims}) tensor(s)")
        if not batched:
            states = [s.unsqueeze(1) for s in states]
        self._check_hidden(states[0], (LD, batch, real_hidden), "hidden[0]" if lstm else "hidden", x)
        if lstm:
            self._check_hidden(states[1], (LD, batch, self.hidden_size), "hidden[1]", x)
            return states[0], states[1]
        return states[0], None

    def _run(self, x, h0, c0, lengths, packing=None, want_internals=False):
        """All layers and directions over a padded [T, B, I] input (in
        sorted order when packed: packing given, a _Packing).  Returns (output, h_n,
        c_n, workspaces), the workspaces per layer and direction in the
        input's time order (None where neither internals nor gradients need
        them: the compiled kernels then keep none)."""
        if x.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        cast = _autocast_dtype(x.device, self._cpu_autocast)
        if cast is None:
            return self._run_layers(x, h0, c0, lengths, packing, None, want_internals)
        with _no_autocast(x.device.type, cast):
            return self._run_layers(x, h0, c0, lengths, packing, cast, want_internals)

    def _recurrence(self, gx, w_hh, b_hh, w_hr, h, c, lengths, need_workspace):
        """One layer direction's recurrent part: (output, h_n, c_n or None,
        workspace, which may be None unless need_workspace)."""
        raise NotImplementedError

    def _dropout(self, layer_output, packing):
        """nn's dropout between layers, drawing the same random numbers: nn
        applies it to the layer's output as it holds it, the [T, B, D*H]
        tensor for padded input and the packed data for packed input."""
        if packing is None:
            return torch.nn.functional.dropout(layer_output, self.dropout, training=True)
        data = torch.nn.functional.dropout(packing.pack(layer_output), self.dropout, training=True)
        return packing.pad(data)

    @staticmethod
    def _projection(layer_input, w_ih, b_ih, packing):
        """The layer's input gates [T, B, G*H].  For packed input only the
        sequences' real rows are multiplied (the packed data), then padded:
        the padding rows would be a third to a half of the product at
        typical length spreads, and the recurrence never reads them."""
        if packing is None:
            return input_projection(layer_input, w_ih, b_ih)
        return packing.pad(input_projection(packing.pack(layer_input), w_ih, b_ih))

    def _run_layers(self, x, h0, c0, lengths, packing, cast, want_internals):
        if cast is not None:  # autocast: the module computes in the autocast dtype
            x, h0 = x.to(cast), h0.to(cast)
            c0 = c0.to(cast) if c0 is not None else None
        h_n, c_n, workspaces = [], [], []
        layer_input = x
        D = self.num_directions
        whole = self._runs_whole_layers(x, lengths, cast, want_internals)
        for layer in range(self.num_layers):
            if D == 2 and self._pairs_directions(layer_input):
                outputs, hs, cs, ws = self._layer_pair(layer, layer_input, h0, c0, lengths,
                                                       packing, cast, want_internals)
                h_n += hs
                c_n += cs
                workspaces += ws
                layer_input = torch.cat(outputs, dim=2)
                if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                    layer_input = self._dropout(layer_input, packing)
                continue
            outputs = []
            for direction in range(D):
                k = layer * D + direction
                if whole:
                    y, h, c = self._layer(k, direction, layer_input, h0[k],
                                          None if c0 is None else c0[k])
                    ws = None
                else:
                    gx, w_hh, b_hh, w_hr = self._direction_inputs(k, direction, layer_input,
                                                                  lengths, packing, cast)
                    y, h, c, ws = self._recurrence(gx, w_hh, b_hh, w_hr, h0[k],
                                                   None if c0 is None else c0[k], lengths,
                                                   want_internals)
                if direction == 1 and not whole:
                    y = reverse_within_lengths(y, lengths)
                    ws = None if ws is None else reverse_within_lengths(ws, lengths)
                if c is not None:
                    c_n.append(c)
                workspaces.append(ws)
                outputs.append(y)
                h_n.append(h)
            layer_input = outputs[0] if D == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = self._dropout(layer_input, packing)
        h_n = h_n[0].unsqueeze(0) if len(h_n) == 1 else torch.stack(h_n)
        if c_n:
            c_n = c_n[0].unsqueeze(0) if len(c_n) == 1 else torch.stack(c_n)
        else:
            c_n = None
        return layer_input, h_n, c_n, workspaces

    def _runs_whole_layers(self, x, lengths, cast, want_internals):
        """Whether each layer direction runs as one call of rnn_ext/_layer.py
        (one autograd node, or the inference kernel): on the CPU backend in
        plain eager mode, for unpacked input, without autocast or internals.
        Elsewhere the projection and the sequence op are separate calls
        through the functional API, as torch.compile, torch.func and the
        Triton and CUDA backends need."""
        if not (x.device.type == "cpu" and lengths is None and cast is None
                and not want_internals and x.size(1) > 0 and _function.plain_eager()):
            return False
        return backends.resolve(self.backend, x.device, x.dtype, self._cell, self.hidden_size,
                                x.size(1)) == "cpu"

    def _layer(self, k, direction, layer_input, h, c):
        """Layer direction k in one call of rnn_ext/_layer.py: (y, h_n, c_n
        or None).  Direction 1 runs over the input reversed in time, as
        _direction_inputs does, and its output is put back in order."""
        w_ih, w_hh, b_ih, b_hh, w_hr = self._direction_weights(k, None)
        x = layer_input.flip(0) if direction == 1 else layer_input
        y, h_n, c_n = _layer.layer(self._cell, x, w_ih, b_ih, w_hh, b_hh, w_hr, h, c,
                                   getattr(self, "nonlinearity", "tanh"))
        return (y.flip(0) if direction == 1 else y), h_n, c_n

    def _direction_weights(self, k, cast):
        """Layer direction k's (w_ih, w_hh, b_ih, b_hh, w_hr), None where
        absent, in the autocast dtype where there is one."""
        return [None if n is None else (_weight(self, n) if cast is None else _weight(self, n).to(cast))
                for n in self._layout[k]]

    def _direction_inputs(self, k, direction, layer_input, lengths, packing, cast):
        """Layer direction k's input gates (direction 1's reversed within
        lengths) and its recurrent weights: (gx, w_hh, b_hh, w_hr), in the
        autocast dtype where there is one.  Direction 1 reverses its input,
        then projects it (a row permutation commutes with the product), as
        _layer does: the same products, so training and
        inference give the same bits (MKL's fp64 products round by a row's
        position), and the copy is I wide, not G*H."""
        w_ih, w_hh, b_ih, b_hh, w_hr = self._direction_weights(k, cast)
        if direction == 1:
            layer_input = reverse_within_lengths(layer_input, lengths)
        return self._projection(layer_input, w_ih, b_ih, packing), w_hh, b_hh, w_hr

    def _pairs_directions(self, layer_input):
        """Whether a bidirectional layer runs as one pair call (both
        directions in one op).  On a GPU, with the compiled cuda backend: the
        persistent kernels run both directions in one launch there.  On the
        CPU, no: one call per direction, each on every thread, ran 5-20%
        faster than the pair op's one team split between the directions
        plus (then) the stacking of the two directions' input gates
        (bidir-2layer, benchmarks/NOTES.md); the CPU pair op stays reachable
        through functional.*_pair."""
        return layer_input.device.type == "cuda" and functional.pair_runs_compiled(
            self.backend, layer_input, self._cell, self.hidden_size, layer_input.size(1))

    def _layer_pair(self, layer, layer_input, h0, c0, lengths, packing, cast, want_internals):
        """Both directions of a bidirectional layer in one call of the
        compiled pair op (functional.*_pair), which the persistent executors
        run in one launch or one team of workers: the same input gates,
        reversal within lengths and results as the per-direction loop of
        _run_layers.  Returns per direction (outputs, h_n, c_n, workspaces)
        as that loop collects them."""
        gx, w_hh, b_hh, w_hr = self._pair_inputs(layer, layer_input, lengths, packing, cast)
        k = layer * 2
        y, h, c, ws = self._recurrence_pair(gx, w_hh, b_hh, w_hr, h0[k:k + 2],
                                            None if c0 is None else c0[k:k + 2], lengths,
                                            want_internals)
        outputs = [y[0], reverse_within_lengths(y[1], lengths)]
        ws = [None, None] if ws is None else [ws[0], reverse_within_lengths(ws[1], lengths)]
        return outputs, [h[0], h[1]], ([] if c is None else [c[0], c[1]]), ws

    def _pair_inputs(self, layer, layer_input, lengths, packing, cast):
        """Both directions' input gates stacked, [2, T, B, G*H] (direction 1's
        reversed within lengths), and their recurrent weights stacked.  The
        gates come from one batched product of the input and its reversal
        (a row permutation commutes with the product) written straight into
        the stacked layout: stacking two [T, B, G*H] projections would copy
        the largest tensor of the layer once more per call (G*H wide where
        the input is I wide).  Packed input keeps the per-direction
        projections over its real rows only, then stacks them."""
        if packing is not None:
            gxs, weights = [], []
            for direction in (0, 1):
                gx, *w = self._direction_inputs(layer * 2 + direction, direction, layer_input,
                                                lengths, packing, cast)
                gxs.append(gx)
                weights.append(w)
            return (torch.stack(gxs),
                    *(None if w[0] is None else torch.stack(w) for w in zip(*weights)))
        w_ih, w_hh, b_ih, b_hh, w_hr = (None if w[0] is None else torch.stack(w) for w in zip(
            self._direction_weights(layer * 2, cast), self._direction_weights(layer * 2 + 1, cast)))
        T, B = layer_input.shape[:2]
        x = torch.stack([layer_input, reverse_within_lengths(layer_input, lengths)]).flatten(1, 2)
        w_t = w_ih.transpose(1, 2)
        gx = torch.bmm(x, w_t) if b_ih is None else torch.baddbmm(b_ih.unsqueeze(1), x, w_t)
        return gx.unflatten(1, (T, B)), w_hh, b_hh, w_hr

    def _recurrence_pair(self, gx, w_hh, b_hh, w_hr, h, c, lengths, need_workspace):
        """Both directions' recurrent parts, every argument stacked on a
        leading dimension of 2 (functional.lstm_pair)."""
        raise NotImplementedError

    def _internals(self, workspaces):
        """Internals [LD, T, B, ...] from the kernels' workspaces [T, B, k*H]."""
        H = self.hidden_size
        ws = torch.stack(workspaces)  # [LD, T, B, 5H (LSTM), 4H (GRU) or H (RNN)]
        gates = ws[..., :self._gates * H].unflatten(-1, (self._gates, H))
        cells = ws[..., self._gates * H:(self._gates + 1) * H] if self._has_cell_state else None
        return Internals(gates, cells)

    def _nn_attributes(self):
        """Instance attributes torch.nn's class needs that rnn_ext keeps as
        class attributes (for to_torch)."""
        return {"mode": self.mode}

    def _state_out(self, h_n, c_n):
        return (h_n, c_n) if self._has_cell_state else h_n

    def forward(self, input, hx=None):
        output, state, _ = self._forward(input, hx, False)
        return output, state

    def forward_with_internals(self, input, hx=None):
        """Like forward, and also returns Internals: the gate activations
        (and LSTM cell states) of every step, layer and direction."""
        return self._forward(input, hx, True)

    # Packed input is handled in eager mode: packing and unpacking read the
    # lengths on the host, which torch.compile's fake tensors cannot (nn's
    # RNNs are not traced at all).  Under torch.compile this is a graph break;
    # the rest of the model is still compiled.
    @torch.compiler.disable
    def _forward_packed(self, input, hx, want_internals):
        data, batch_sizes, sorted_indices, unsorted_indices = input
        self._check_input(data)
        if data.dim() != 2:
            raise RuntimeError(f"input must have 2 dimensions, got {data.dim()}")
        # Padded in sorted order (longest first): the kernels then shrink
        # each step's work to the sequences still running.
        packing = _Packing(batch_sizes, data.device)
        x, lengths = packing.pad(data), packing.lengths
        h0, c0 = self._states(hx, x.size(1), x, True)
        if sorted_indices is not None:
            h0 = h0.index_select(1, sorted_indices)
            c0 = c0.index_select(1, sorted_indices) if c0 is not None else None
        y, h_n, c_n, ws = self._run(x, h0, c0, lengths, packing, want_internals)
        out = PackedSequence(packing.pack(y), batch_sizes,
                             sorted_indices, unsorted_indices)
        inside = self._internals(ws) if want_internals else None
        if unsorted_indices is not None:
            h_n = h_n.index_select(1, unsorted_indices)
            c_n = c_n.index_select(1, unsorted_indices) if c_n is not None else None
            if inside is not None:
                inside = Internals(*(None if t is None else t.index_select(2, unsorted_indices)
                                     for t in inside))
        return out, self._state_out(h_n, c_n), inside

    def _forward(self, input, hx, want_internals):
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx, want_internals)
        dim = input.dim()
        if dim not in (2, 3):
            raise ValueError(f"{self._message_name or self.mode}: Expected input to be 2D or 3D, got {dim}D instead")
        self._check_input(input)
        batched = dim == 3
        if not batched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        h0, c0 = self._states(hx, input.size(1), input, batched)
        y, h_n, c_n, ws = self._run(input, h0, c0, None, want_internals=want_internals)
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
        return y, self._state_out(h_n, c_n), inside


class LSTM(_RNNBase):
    """Drop-in for torch.nn.LSTM, run by rnn_ext's fused kernels.

    Takes nn.LSTM's arguments, plus `backend`: "auto" (default), "cpu",
    "cuda", "triton" or "reference"."""
    _gates = 4
    _cell = "lstm"
    _has_cell_state = True
    mode = "LSTM"
    _cpu_autocast = True

    def _recurrence(self, gx, w_hh, b_hh, w_hr, h, c, lengths, need_workspace):
        return functional.lstm(gx, w_hh, b_hh, w_hr, h, c, lengths=lengths, backend=self.backend,
                               need_workspace=need_workspace)

    def _recurrence_pair(self, gx, w_hh, b_hh, w_hr, h, c, lengths, need_workspace):
        return functional.lstm_pair(gx, w_hh, b_hh, w_hr, h, c, lengths=lengths,
                                    backend=self.backend, need_workspace=need_workspace)


class GRU(_RNNBase):
    """Drop-in for torch.nn.GRU, run by rnn_ext's fused kernels (same
    formula as nn.GRU: the reset gate multiplies W_hn h + b_hn)."""
    _gates = 3
    _cell = "gru"
    mode = "GRU"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto",
                 proj_size=0):
        if proj_size != 0:  # nn.GRU takes proj_size only to refuse it
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend)

    def _recurrence(self, gx, w_hh, b_hh, w_hr, h, c, lengths, need_workspace):
        y, h_n, ws = functional.gru(gx, w_hh, b_hh, h, lengths=lengths, backend=self.backend,
                                    need_workspace=need_workspace)
        return y, h_n, None, ws

    def _recurrence_pair(self, gx, w_hh, b_hh, w_hr, h, c, lengths, need_workspace):
        y, h_n, ws = functional.gru_pair(gx, w_hh, b_hh, h, lengths=lengths, backend=self.backend,
                                         need_workspace=need_workspace)
        return y, h_n, None, ws


# ------------------------------------------------------------------ cells --
class _CellBase(nn.Module):
    """What LSTMCell, GRUCell and RNNCell share; a subclass sets the class
    attributes and, where its step differs, overrides _recurrence."""
    _gates = None
    _has_cell_state = False
    _state_names = ("hidden",)  # how nn's messages name the states
    mode = None
    _cpu_autocast = False  # whether torch.nn runs this in bf16 under CPU autocast

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend="auto"):
        super().__init__()
        _check_backend(backend)
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
        """nn's checks and messages (torch.nn.*Cell.forward and ATen's
        check_rnn_cell_forward_*), on batched input and states."""
        batch, features = input.shape
        if features != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {features} "
                               f"expected {self.input_size}")
        for k, s in enumerate(states):
            if batch != s.size(0):
                raise RuntimeError(f"Input batch size {batch} doesn't match hidden{k} "
                                   f"batch size {s.size(0)}")
            if s.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {s.size(1)}, "
                                   f"expected {self.hidden_size}")
        if not torch._C._is_any_autocast_enabled():
            dtype = _weight(self, "weight_ih").dtype
            if input.dtype != dtype or any(s.dtype != dtype for s in states):
                name, t = next((n, t) for n, t in (("input", input), *((f"hidden{k}", s) for k, s in
                                                    enumerate(states))) if t.dtype != dtype)
                raise RuntimeError(f"{self.mode}: {name} has dtype {t.dtype} but the weights have "
                                   f"dtype {dtype}; convert the input (input.to({dtype})) or "
                                   f"the module (module.to({t.dtype}))")

    def _nn_attributes(self):
        """Instance attributes torch.nn's class needs that rnn_ext keeps as
        class attributes (for to_torch): none for the cells."""
        return {}

    def _one_op_step(self, input):
        """The weights (w_ih, w_hh, b_ih, b_hh) when this call may run as
        one op (rnn_ext::lstm_cell, gru_cell, rnn_cell: input projection,
        step and, in C++, autograd) instead of the general path: a batched
        plain CPU tensor, in plain eager mode (rnn_ext._function.plain_eager),
        on the compiled CPU kernels.  Else None.

        The op checks its inputs strictly (dtypes, devices, shapes); the
        caller takes the general path whenever it raises, so that the error
        a user sees is nn's, raised there."""
        # plain_eager first: under torch.compile nothing else is traced.
        if not (_function.plain_eager() and type(input) is torch.Tensor and input.is_cpu
                and input.dim() == 2):
            return None
        backend = self.backend
        if not (backend == "cpu" or (backend == "auto" and backends.auto_runs_cpu_on_cpu())):
            return None
        p = self._parameters
        try:
            return p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]
        except KeyError:  # parametrized, or replaced: what getattr gives
            return tuple(_weight(self, n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def _recurrence(self, gx, w_hh, b_hh, states):
        """One step's recurrent part: the new states, as a tuple."""
        raise NotImplementedError

    def _cell_forward(self, input, hx):
        """Shared forward: hx is None or a tuple of the states."""
        mode = self.mode
        if input.dim() not in (1, 2):
            raise ValueError(f"{mode}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for name, s in zip(self._state_names, hx):
                if s.dim() not in (1, 2):
                    raise ValueError(f"{mode}: Expected {name} to be 1D or 2D, got {s.dim()}D instead")
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = input.new_zeros(input.size(0), self.hidden_size)
            hx = (zeros,) * len(self._state_names)
        elif not batched:
            hx = tuple(s.unsqueeze(0) for s in hx)
        self._check(input, hx)
        cast = _autocast_dtype(input.device, self._cpu_autocast)
        if cast is None:
            out = self._step(input, hx, None)
        else:
            with _no_autocast(input.device.type, cast):
                out = self._step(input, hx, cast)
        return out if batched else tuple(s.squeeze(0) for s in out)

    def _step(self, input, states, cast):
        w_ih, w_hh = _weight(self, "weight_ih"), _weight(self, "weight_hh")
        b_ih, b_hh = _weight(self, "bias_ih"), _weight(self, "bias_hh")
        if cast is not None:
            input = input.to(cast)
            states = tuple(s.to(cast) for s in states)
            w_ih, w_hh, b_ih, b_hh = (None if w is None else w.to(cast) for w in (w_ih, w_hh, b_ih, b_hh))
        gx = torch.nn.functional.linear(input, w_ih, b_ih).unsqueeze(0)
        return self._recurrence(gx, w_hh, b_hh, states)


class LSTMCell(_CellBase):
    """Drop-in for torch.nn.LSTMCell: one step, pointwise part fused."""
    _gates = 4
    _has_cell_state = True
    _state_names = ("hx[0]", "hx[1]")
    mode = "LSTMCell"

    def forward(self, input, hx=None):
        weights = self._one_op_step(input)
        if weights is not None:
            try:
                if hx is None:
                    return _ops.lstm_cell.default(input, None, None, *weights)
                if not isinstance(hx, torch.Tensor):
                    h, c = hx
                    return _ops.lstm_cell.default(input, h, c, *weights)
            except (RuntimeError, TypeError, ValueError):
                pass  # the general path says what is wrong, as nn does
        if isinstance(hx, torch.Tensor):
            raise TypeError("LSTMCell: hx must be a tuple of two tensors (h_0, c_0), not a single "
                            "Tensor")
        return self._cell_forward(input, None if hx is None else tuple(hx))

    def _recurrence(self, gx, w_hh, b_hh, states):
        _, h, c, _ = functional.lstm(gx, w_hh, b_hh, None, states[0], states[1], backend=self.backend,
                                     need_workspace=False)
        return h, c


class GRUCell(_CellBase):
    """Drop-in for torch.nn.GRUCell: one step, pointwise part fused."""
    _gates = 3
    mode = "GRUCell"

    def forward(self, input, hx=None):
        weights = self._one_op_step(input)
        if weights is not None:
            try:
                return _ops.gru_cell.default(input, hx, *weights)
            except (RuntimeError, TypeError, ValueError):
                pass  # the general path says what is wrong, as nn does
        (h,) = self._cell_forward(input, None if hx is None else (hx,))
        return h

    def _recurrence(self, gx, w_hh, b_hh, states):
        _, h, _ = functional.gru(gx, w_hh, b_hh, states[0], backend=self.backend,
                                 need_workspace=False)
        return (h,)


def _check_backend(backend):
    if backend not in backends.BACKENDS:
        raise ValueError(f"rnn_ext: unknown backend {backend!r}; choose one of {backends.BACKENDS}")


class RNN(_RNNBase):
    """Drop-in for torch.nn.RNN (Elman RNN, nonlinearity "tanh" or "relu"),
    run by rnn_ext's fused kernels.  Takes nn.RNN's arguments in nn.RNN's
    order, plus `backend`."""
    _gates = 1
    _cell = "rnn"
    _message_name = "RNN"  # nn's messages say RNN, its mode RNN_TANH or RNN_RELU
    _cpu_autocast = True

    @property
    def mode(self):
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 backend="auto", proj_size=0):
        if proj_size != 0:  # nn.RNN takes proj_size only to refuse it
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend)

    def _nn_attributes(self):
        return {"mode": self.mode}

    def _recurrence(self, gx, w_hh, b_hh, w_hr, h, c, lengths, need_workspace):
        y, h_n, ws = functional.rnn(gx, w_hh, b_hh, h, lengths=lengths,
                                    nonlinearity=self.nonlinearity, backend=self.backend,
                                    need_workspace=need_workspace)
        return y, h_n, None, ws

    def _recurrence_pair(self, gx, w_hh, b_hh, w_hr, h, c, lengths, need_workspace):
        y, h_n, ws = functional.rnn_pair(gx, w_hh, b_hh, h, lengths=lengths,
                                         nonlinearity=self.nonlinearity, backend=self.backend,
                                         need_workspace=need_workspace)
        return y, h_n, None, ws


class RNNCell(_CellBase):
    """Drop-in for torch.nn.RNNCell: one Elman step ("tanh" or "relu"),
    pointwise part fused."""
    _gates = 1
    mode = "RNNCell"
    _cpu_autocast = True  # nn runs RNNCell in bf16 under CPU autocast

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
        weights = self._one_op_step(input)
        if weights is not None:
            try:
                return _ops.rnn_cell.default(input, hx, *weights, self.nonlinearity)
            except (RuntimeError, TypeError, ValueError):
                pass  # the general path says what is wrong, as nn does
        (h,) = self._cell_forward(input, None if hx is None else (hx,))
        return h

    def _recurrence(self, gx, w_hh, b_hh, states):
        _, h, _ = functional.rnn(gx, w_hh, b_hh, states[0], nonlinearity=self.nonlinearity,
                                 backend=self.backend, need_workspace=False)
        return (h,)


# ---------------------------------------------------------------- convert --
# The torch.nn class each rnn_ext module replaces.  convert() and to_torch()
# read only this table (and each class's _nn_attributes()); the tests of
# nn's ModuleInfo inputs and the random configurations are parametrised
# over it: a new module is one more pair.
PAIRS = [(nn.LSTM, LSTM), (nn.GRU, GRU), (nn.RNN, RNN), (nn.LSTMCell, LSTMCell),
         (nn.GRUCell, GRUCell), (nn.RNNCell, RNNCell)]


def _plain_class(module):
    """The module's class, seen through torch.nn.utils.parametrize, which
    swaps in a generated subclass holding the parametrized properties."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls


def _retype(module, new_cls):
    """Turn `module` into a `new_cls` in place: the same object, so hooks,
    buffers, extra attributes, the training flag, parametrizations, the very
    same Parameters and every other reference to the module are kept."""
    if parametrize.is_parametrized(module):
        # Rebuild parametrize's generated subclass on top of new_cls.
        generated = type(module)
        namespace = {k: v for k, v in generated.__dict__.items() if k not in ("__dict__", "__weakref__")}
        new_cls = type(f"Parametrized{new_cls.__name__}", (new_cls,), namespace)
    module.__class__ = new_cls


def _replace(module, mapping, retype, seen):
    if id(module) in seen:
        return module
    seen.add(id(module))
    cls = _plain_class(module)
    if cls in mapping:
        retype(module, mapping[cls])
        return module
    for child in module.children():
        _replace(child, mapping, retype, seen)
    return module


def convert(module, backend="auto"):
    """Turn every nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell and nn.RNNCell inside
    `module` (or `module` itself) into its rnn_ext counterpart, in place:
    each stays the same object with the same Parameters, hooks, buffers,
    attributes, training flag and parametrizations (weight_norm included),
    and a module used in several places stays one module.  Returns `module`."""
    _check_backend(backend)

    def to_ext(m, ext_cls):
        for stale in ("_flat_weights", "_flat_weight_refs", "mode"):  # nn's; ours are computed
            m.__dict__.pop(stale, None)
        _retype(m, ext_cls)
        m.backend = backend
        if isinstance(m, _RNNBase):
            m._init_layout()

    return _replace(module, dict(PAIRS), to_ext, set())


def to_torch(module):
    """The reverse of convert(), in place: rnn_ext modules back to torch.nn ones."""
    def to_nn(m, nn_cls):
        state = m._nn_attributes()
        for ours in ("backend", "_layout"):
            m.__dict__.pop(ours, None)
        _retype(m, nn_cls)
        m.__dict__.update(state)
        if isinstance(m, nn.RNNBase):
            m._init_flat_weights()

    return _replace(module, {ext: nn_cls for nn_cls, ext in PAIRS}, to_nn, set())
