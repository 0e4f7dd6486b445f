"""rnn_ext as a drop-in for torch.nn where real code leans on nn's details:
packed input under torch.compile, convert() keeping everything a module
carries, dtype mismatches, empty batches, torch.func, weight_norm and
parametrize, constructor signatures, nn's error messages, dropout drawing
the same random numbers as nn (issue 13)."""
import copy
import inspect
import typing

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnn_ext
from _utils import cpu_backends
from rnn_ext.modules import PAIRS

F64 = dict(rtol=1e-10, atol=1e-12)
I, H = 3, 4


def is_cell(ext_cls):
    return issubclass(ext_cls, rnn_ext.modules._CellBase)


def twins(nn_cls, ext_cls, *args, backend="auto", dtype=torch.float64, **kw):
    """An nn module and an rnn_ext module with the same weights."""
    ref = nn_cls(*args, **kw).to(dtype)
    ext = ext_cls(*args, **kw, backend=backend).to(dtype)
    ext.load_state_dict(ref.state_dict())
    return ref, ext


def tensors_of(out):
    """Every tensor in a module's output (PackedSequence data included)."""
    if isinstance(out, PackedSequence):
        return [out.data]
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in tensors_of(o)]


# ------------------------------------------------ 1. packed input, compile --
class PackedEncoder(nn.Module):
    """Tacotron2's encoder pattern: pack, bidirectional LSTM, unpack."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(I, I)
        self.lstm = nn.LSTM(I, H, num_layers=2, bidirectional=True)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(torch.tanh(self.proj(x)), lengths, enforce_sorted=False)
        y, (h, c) = self.lstm(packed)
        y, _ = pad_packed_sequence(y)
        return y.sum(0) + h[-1].repeat(1, 2)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_packed_input_under_torch_compile_matches_eager(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = rnn_ext.convert(PackedEncoder(), backend=backend)
    compiled = torch.compile(model)  # default mode: graph breaks allowed
    x, lengths = torch.randn(6, 3, I), torch.tensor([3, 6, 2])
    want = model(x, lengths)
    got = compiled(x, lengths)
    torch.testing.assert_close(got, want)
    g_want = torch.autograd.grad(want.square().sum(), list(model.parameters()))
    g_got = torch.autograd.grad(got.square().sum(), list(model.parameters()))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------- 2. convert keeps --
def test_convert_keeps_weight_norm_hooks_buffers_attributes_and_sharing():
    torch.manual_seed(0)
    lstm = nn.utils.weight_norm(nn.LSTM(I, H), "weight_hh_l0")
    lstm.register_buffer("scale", torch.tensor(2.0))
    lstm.note = "kept"
    calls = []
    lstm.register_forward_hook(lambda m, args, out: calls.append("hook"))
    lstm.register_forward_pre_hook(lambda m, args: calls.append("pre"))
    lstm.eval()
    model = nn.ModuleDict({"a": lstm, "b": lstm}).double()  # one module in two places
    x = torch.randn(5, 2, I, dtype=torch.float64)
    want = lstm(x)[0]
    calls.clear()
    converted = rnn_ext.convert(model, backend="cpu")
    assert converted["a"] is converted["b"] is lstm and isinstance(lstm, rnn_ext.LSTM)
    assert lstm.note == "kept" and torch.equal(lstm.scale, torch.tensor(2.0, dtype=torch.float64))
    assert not lstm.training and lstm.backend == "cpu"
    assert lstm.weight_hh_l0_g.device.type == "cpu"
    torch.testing.assert_close(lstm(x)[0], want, **F64)
    assert calls == ["pre", "hook"]
    back = rnn_ext.to_torch(converted)
    assert back["a"] is back["b"] is lstm and type(lstm) is nn.LSTM
    calls.clear()
    torch.testing.assert_close(lstm(x)[0], want, **F64)
    assert calls == ["pre", "hook"] and lstm.note == "kept"


class Symmetric(nn.Module):
    def forward(self, w):
        return (w + w.flip(0)) / 2


@pytest.mark.parametrize("nn_cls,ext_cls", PAIRS, ids=[n.__name__ for n, _ in PAIRS])
def test_convert_keeps_parametrizations(nn_cls, ext_cls):
    torch.manual_seed(0)
    ref = nn_cls(I, H).double()
    name = "weight_hh" if is_cell(ext_cls) else "weight_hh_l0"
    parametrize.register_parametrization(ref, name, Symmetric())
    module = copy.deepcopy(ref)
    x = torch.randn(2, I, dtype=torch.float64) if is_cell(ext_cls) else torch.randn(5, 2, I, dtype=torch.float64)
    converted = rnn_ext.convert(module)
    assert isinstance(converted, ext_cls) and parametrize.is_parametrized(converted, name)
    want, got = tensors_of(ref(x)), tensors_of(converted(x))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **F64)
    back = rnn_ext.to_torch(converted)
    assert isinstance(back, nn_cls) and parametrize.is_parametrized(back, name)
    for a, b in zip(tensors_of(back(x)), want):
        torch.testing.assert_close(a, b, **F64)


# ----------------------------------------------------------- 3. dtypes -----
def _same_error_type(make_call):
    errors = []
    for lib in (nn, rnn_ext):
        with pytest.raises(Exception) as info:
            make_call(lib)
        errors.append(info)
    assert errors[0].type is errors[1].type, (errors[0].value, errors[1].value)
    return str(errors[1].value)


DTYPE_CALLS = {
    "int64 input to LSTMCell": lambda lib, be: _cell(lib.LSTMCell, be)(torch.randint(0, 3, (2, I))),
    "int64 input to GRUCell": lambda lib, be: _cell(lib.GRUCell, be)(torch.randint(0, 3, (2, I))),
    "fp64 input to fp32 LSTMCell": lambda lib, be: _cell(lib.LSTMCell, be)(torch.randn(2, I, dtype=torch.float64)),
    "fp64 h to fp32 GRUCell": lambda lib, be: _cell(lib.GRUCell, be)(torch.randn(2, I), torch.randn(2, H).double()),
    "fp64 input to fp32 LSTM": lambda lib, be: _layer(lib.LSTM, be)(torch.randn(5, 2, I, dtype=torch.float64)),
    "fp64 h0 c0 to fp32 LSTM": lambda lib, be: _layer(lib.LSTM, be)(
        torch.randn(5, 2, I), (torch.randn(1, 2, H).double(), torch.randn(1, 2, H).double())),
    "fp64 h0 to fp32 GRU": lambda lib, be: _layer(lib.GRU, be)(torch.randn(5, 2, I), torch.randn(1, 2, H).double()),
    "one fp64 weight in an LSTM": lambda lib, be: _one_weight(_layer(lib.LSTM, be), "weight_hh_l0")(torch.randn(5, 2, I)),
    "one fp64 weight in a GRU": lambda lib, be: _one_weight(_layer(lib.GRU, be), "bias_hh_l0")(torch.randn(5, 2, I)),
    "one fp64 weight in a GRUCell": lambda lib, be: _one_weight(_cell(lib.GRUCell, be), "weight_hh")(torch.randn(2, I)),
}


def _cell(cls, backend):
    return cls(I, H) if cls.__module__.startswith("torch") else cls(I, H, backend=backend)


def _layer(cls, backend):
    return cls(I, H) if cls.__module__.startswith("torch") else cls(I, H, backend=backend)


def _one_weight(module, name):
    with torch.no_grad():
        setattr(module, name, nn.Parameter(getattr(module, name).double()))
    return module


@pytest.mark.parametrize("backend", ["auto"] + cpu_backends())
@pytest.mark.parametrize("name", list(DTYPE_CALLS))
def test_dtype_mismatch_raises_like_nn(name, backend):
    message = _same_error_type(lambda lib: DTYPE_CALLS[name](lib, backend))
    assert "dtype" in message


# ------------------------------------------------------ 5. empty batches ---
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("nn_cls,ext_cls", PAIRS, ids=[n.__name__ for n, _ in PAIRS])
def test_empty_batch_like_nn(nn_cls, ext_cls, backend):
    ref, ext = twins(nn_cls, ext_cls, I, H, backend=backend)
    x = torch.randn(0, I, dtype=torch.float64) if is_cell(ext_cls) else torch.randn(5, 0, I, dtype=torch.float64)
    want, got = tensors_of(ref(x)), tensors_of(ext(x))
    assert [t.shape for t in got] == [t.shape for t in want]
    assert [t.requires_grad for t in got] == [t.requires_grad for t in want]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("nn_cls,ext_cls", [p for p in PAIRS if is_cell(p[1])], ids=lambda c: c.__name__)
def test_cell_with_hidden_size_zero_like_nn(nn_cls, ext_cls, backend):
    ref, ext = twins(nn_cls, ext_cls, I, 0, backend=backend)
    x = torch.randn(2, I, dtype=torch.float64, requires_grad=True)
    want, got = tensors_of(ref(x)), tensors_of(ext(x))
    assert [t.shape for t in got] == [t.shape for t in want] == [(2, 0)] * len(want)
    (g,) = torch.autograd.grad(sum(t.sum() for t in got), x)
    assert torch.equal(g, torch.zeros_like(x))


# --------------------------------------------------------- 6. torch.func ---
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("nn_cls,ext_cls", PAIRS, ids=[n.__name__ for n, _ in PAIRS])
def test_torch_func_grad_vjp_jacrev_like_nn(nn_cls, ext_cls, backend):
    from torch.func import functional_call, grad, jacrev, vjp

    ref, ext = twins(nn_cls, ext_cls, I, H, backend=backend)
    x = torch.randn(2, I, dtype=torch.float64) if is_cell(ext_cls) else torch.randn(3, 2, I, dtype=torch.float64)

    def first(module):
        return lambda x: tensors_of(module(x))[0]

    # grad with respect to the parameters, through functional_call
    params = {k: v.detach() for k, v in ref.named_parameters()}
    def loss(module):
        return lambda p: tensors_of(functional_call(module, p, (x,)))[0].sum()

    got, want = grad(loss(ext))(params), grad(loss(ref))(params)
    for name in params:
        torch.testing.assert_close(got[name], want[name], **F64, msg=lambda m: f"{name}: {m}")
    cotangent = torch.randn_like(first(ref)(x))
    torch.testing.assert_close(vjp(first(ext), x)[1](cotangent)[0], vjp(first(ref), x)[1](cotangent)[0], **F64)
    torch.testing.assert_close(jacrev(first(ext))(x), jacrev(first(ref))(x), **F64)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("nn_cls,ext_cls", PAIRS, ids=[n.__name__ for n, _ in PAIRS])
def test_vmap(nn_cls, ext_cls, backend):
    """vmap over a batch of inputs; against nn's vmap where nn supports it
    (GRUCell), else against a loop (nn.LSTM, GRU and LSTMCell have no
    batching rule)."""
    from torch.func import jacrev, vmap

    ref, ext = twins(nn_cls, ext_cls, I, H, backend=backend)
    xs = torch.randn(4, 2, I, dtype=torch.float64) if is_cell(ext_cls) else torch.randn(4, 3, 2, I, dtype=torch.float64)

    def first(module):
        return lambda x: tensors_of(module(x))[0]

    want = torch.stack([first(ref)(x) for x in xs])
    torch.testing.assert_close(vmap(first(ext))(xs), want, **F64)
    if nn_cls is nn.GRUCell:
        torch.testing.assert_close(vmap(first(ext))(xs), vmap(first(ref))(xs), **F64)
    if is_cell(ext_cls):  # per-sample Jacobians
        want = torch.stack([jacrev(first(ref))(x) for x in xs])
        torch.testing.assert_close(vmap(jacrev(first(ext)))(xs), want, **F64)


# ------------------------------------------- 7. nn's weight attributes -----
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_flat_weights_all_weights_and_flatten_parameters_like_nn(kind):
    kw = dict(num_layers=2, bidirectional=True, **({"proj_size": 2} if kind == "LSTM" else {}))
    ref, ext = twins(getattr(nn, kind), getattr(rnn_ext, kind), I, H, **kw)
    assert ext._flat_weights_names == ref._flat_weights_names
    assert all(a is b for a, b in zip(ext._flat_weights, ext.parameters()))
    assert [[w.shape for w in ws] for ws in ext.all_weights] == [[w.shape for w in ws] for ws in ref.all_weights]
    ext.flatten_parameters()
    ext.float()  # nn refreshes _flat_weights in _apply
    assert all(w.dtype == torch.float32 for w in ext._flat_weights)
    new = nn.Parameter(torch.zeros_like(ext.weight_hh_l0))
    ext.weight_hh_l0 = new  # nn keeps _flat_weights current on assignment
    assert ext._flat_weights[ext._flat_weights_names.index("weight_hh_l0")] is new


@pytest.mark.parametrize("norm", ["weight_norm", "spectral_norm", "p.weight_norm", "p.spectral_norm", "parametrize"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_weight_norm_spectral_norm_and_parametrize_like_nn(kind, norm):
    ref, ext = twins(getattr(nn, kind), getattr(rnn_ext, kind), I, H, backend="cpu")

    def apply(m):
        torch.manual_seed(1)  # spectral_norm draws a random vector
        if norm == "parametrize":
            return parametrize.register_parametrization(m, "weight_hh_l0", Symmetric())
        fn = norm.replace("p.", "")
        lib = nn.utils.parametrizations if norm.startswith("p.") else nn.utils
        return getattr(lib, fn)(m, "weight_hh_l0")

    ref, ext = apply(ref), apply(ext)
    if norm == "p.spectral_norm":
        # In training, each read of the weight runs one step of the power
        # iteration; nn's forward reads it twice (_update_flat_weights),
        # rnn_ext's once.  In eval mode the estimate is fixed.
        ref.eval(), ext.eval()
    x = torch.randn(5, 2, I, dtype=torch.float64)
    want, got = tensors_of(ref(x)), tensors_of(ext(x))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **F64)
    assert ext._flat_weights_names == ref._flat_weights_names
    for a, b in zip(ext._flat_weights, ref._flat_weights):
        torch.testing.assert_close(a, b, **F64)
    g_want = torch.autograd.grad(sum(t.sum() for t in want), list(ref.parameters()))
    g_got = torch.autograd.grad(sum(t.sum() for t in got), list(ext.parameters()))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, **F64)


# ------------------------------------------------------- 8. signatures -----
def nn_signature(nn_cls):
    """nn's documented constructor signature: the typed overload where the
    class itself takes (*args, **kwargs) (nn.LSTM, GRU, RNN)."""
    overloads = [o for o in typing.get_overloads(nn_cls.__init__)
                 if not any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(o).parameters.values())]
    return inspect.signature(overloads[0] if overloads else nn_cls.__init__)


@pytest.mark.parametrize("nn_cls,ext_cls", PAIRS, ids=[n.__name__ for n, _ in PAIRS])
def test_constructor_signature_matches_nn(nn_cls, ext_cls):
    theirs = list(nn_signature(nn_cls).parameters.values())
    ours = list(inspect.signature(ext_cls.__init__).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[:len(theirs)]] == \
        [(p.name, p.kind, p.default) for p in theirs]
    assert all(p.kind is p.KEYWORD_ONLY for p in ours[len(theirs):])  # backend (and GRU's proj_size)
    # Positionally: every argument of nn's, in nn's order, lands where nn puts it.
    values = {"input_size": I, "hidden_size": H, "num_layers": 2, "nonlinearity": "relu",
              "bias": False, "batch_first": True, "dropout": 0.25, "bidirectional": True}
    args = [values[p.name] for p in theirs[1:] if p.name in values]
    ref = nn_cls(*args)
    ext = ext_cls(*args)
    for p in theirs[1:len(args) + 1]:
        assert getattr(ext, p.name) == getattr(ref, p.name), p.name


# ------------------------------------------------------ 9. nn's errors -----
NN_ERRORS = {
    "zero-length sequence": lambda lib: lib.GRU(I, H)(torch.randn(0, 2, I)),
    "zero-length sequence, LSTM batch_first": lambda lib: lib.LSTM(I, H, batch_first=True)(torch.randn(2, 0, I)),
    "proj_size given to GRU": lambda lib: lib.GRU(I, H, proj_size=2),
    "LSTMCell hx as one tensor": lambda lib: lib.LSTMCell(I, H)(torch.randn(2, I), torch.randn(2, H)),
    "LSTMCell hidden size": lambda lib: lib.LSTMCell(I, H)(torch.randn(2, I), (torch.randn(2, H + 1), torch.randn(2, H))),
    "GRUCell batch size": lambda lib: lib.GRUCell(I, H)(torch.randn(2, I), torch.randn(3, H)),
    "GRUCell input size": lambda lib: lib.GRUCell(I, H)(torch.randn(2, I + 1)),
}
SAME_WORDS = {
    "zero-length sequence": "sequence length",
    "zero-length sequence, LSTM batch_first": "sequence length",
    "proj_size given to GRU": "proj_size",
    "LSTMCell hx as one tensor": "tuple",
    "LSTMCell hidden size": "hidden0 has inconsistent hidden_size: got 5, expected 4",
    "GRUCell batch size": "Input batch size 2 doesn't match hidden0 batch size 3",
    "GRUCell input size": "input has inconsistent input_size: got 4 expected 3",
}


@pytest.mark.parametrize("name", list(NN_ERRORS))
def test_errors_name_the_problem_nn_names(name):
    message = _same_error_type(NN_ERRORS[name])
    assert SAME_WORDS[name] in message


# -------------------------------------------------- 11. dropout and RNG ----
INPUT_KINDS = ["padded", "batch_first", "unbatched", "packed_sorted", "packed_unsorted"]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("inp", INPUT_KINDS)
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_dropout_draws_the_same_masks_as_nn(kind, inp, backend):
    ref, ext = twins(getattr(nn, kind), getattr(rnn_ext, kind), I, H, backend=backend, num_layers=3,
                     dropout=0.5, bidirectional=True, batch_first=inp == "batch_first")
    x = torch.randn(5, 3, I, dtype=torch.float64, requires_grad=True)
    if inp == "unbatched":
        x = x[:, 0]
    if inp.startswith("packed"):
        lengths = torch.tensor([5, 3, 2] if inp == "packed_sorted" else [2, 5, 3])
        x = pack_padded_sequence(x, lengths, enforce_sorted=inp == "packed_sorted")
    outs = []
    for module in (ref, ext):
        torch.manual_seed(7)
        outs.append(tensors_of(module(x)))
        outs.append(torch.rand(3))  # the generator is left where nn leaves it
    (want, rng_want), (got, rng_got) = outs[:2], outs[2:]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **F64)
    assert torch.equal(rng_got, rng_want)
    gw = torch.autograd.grad(sum(t.sum() for t in want), list(ref.parameters()))
    gg = torch.autograd.grad(sum(t.sum() for t in got), list(ext.parameters()))
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b, **F64)
