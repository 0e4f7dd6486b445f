"""rnn_ext.LSTM / GRU / RNN / LSTMCell / GRUCell / RNNCell against torch.nn:
constructor, parameters, state_dict, forward inputs and outputs, numbers
and gradients.  A kind is "lstm", "gru", "rnn_tanh" or "rnn_relu"."""
import copy
import inspect
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnn_ext

INPUTS = ["padded", "packed_sorted", "packed_unsorted", "unbatched"]
T, B, I, H, P = 5, 3, 4, 6, 3
LENGTHS = {"packed_sorted": [5, 3, 2], "packed_unsorted": [2, 5, 4]}
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=2e-5)}


KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def classes(kind):
    """(nn class, rnn_ext class, extra constructor arguments) of a kind."""
    if kind.startswith("rnn_"):
        return nn.RNN, rnn_ext.RNN, {"nonlinearity": kind[len("rnn_"):]}
    return {"lstm": (nn.LSTM, rnn_ext.LSTM, {}), "gru": (nn.GRU, rnn_ext.GRU, {})}[kind]


def cell_classes(kind):
    if kind.startswith("rnn_"):
        return nn.RNNCell, rnn_ext.RNNCell, {"nonlinearity": kind[len("rnn_"):]}
    return {"lstm": (nn.LSTMCell, rnn_ext.LSTMCell, {}), "gru": (nn.GRUCell, rnn_ext.GRUCell, {})}[kind]


def grid():
    for kind, layers, bidir, batch_first, proj, bias, inp, h0 in itertools.product(
            KINDS, [1, 2, 3], [False, True], [False, True], [0, P], [True, False],
            INPUTS, [False, True]):
        if kind != "lstm" and proj:
            continue
        if kind.startswith("rnn_") and layers == 3:
            continue  # two layers already pass state and gradients between layers
        yield pytest.param(kind, layers, bidir, batch_first, proj, bias, inp, h0,
                           id=f"{kind}-L{layers}-{'bi' if bidir else 'uni'}-{'bf' if batch_first else 'tf'}"
                              f"-P{proj}-{'bias' if bias else 'nobias'}-{inp}-{'h0' if h0 else 'noh0'}")


def pair(kind, dtype=torch.float64, **kw):
    """An nn module and an rnn_ext module holding the same weights."""
    nn_cls, ext_cls, extra = classes(kind)
    ref = nn_cls(I, H, **extra, **kw).to(dtype)
    ext = ext_cls(I, H, **extra, **kw).to(dtype)
    ext.load_state_dict(ref.state_dict())
    return ref, ext


def make_input(inp, batch_first, dtype):
    if inp == "unbatched":
        return torch.randn(T, I, dtype=dtype, requires_grad=True)
    shape = (B, T, I) if batch_first else (T, B, I)
    return torch.randn(shape, dtype=dtype, requires_grad=True)


def as_module_input(x, inp, batch_first):
    if inp.startswith("packed"):
        return pack_padded_sequence(x, torch.tensor(LENGTHS[inp]), batch_first=batch_first,
                                    enforce_sorted=(inp == "packed_sorted"))
    return x


def flatten(out):
    """Every tensor of a module's output, PackedSequence data included."""
    y, state = out
    y = y.data if isinstance(y, PackedSequence) else y
    return [y] + (list(state) if isinstance(state, tuple) else [state])


def run(module, x, inp, batch_first, hx):
    return flatten(module(as_module_input(x, inp, batch_first), hx))


def check_pair(ref, ext, x, inp, batch_first, hx, dtype):
    wrt = [x] + [t for t in (hx if isinstance(hx, tuple) else (hx,)) if t is not None]
    want = run(ref, x, inp, batch_first, hx)
    got = run(ext, x, inp, batch_first, hx)
    assert len(got) == len(want)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(w.shape, generator=gen, dtype=dtype) for w in want]
    loss = lambda outs: sum((o * w).sum() for o, w in zip(outs, weights))  # noqa: E731
    g_want = torch.autograd.grad(loss(want), wrt + list(ref.parameters()))
    g_got = torch.autograd.grad(loss(got), wrt + list(ext.parameters()))
    for o, w in zip(got, want):
        assert o.shape == w.shape
        torch.testing.assert_close(o, w, **TOL[dtype])
    names = ["input", "h0", "c0"][:len(wrt)] + [n for n, _ in ref.named_parameters()]
    for name, g, w in zip(names, g_got, g_want):
        torch.testing.assert_close(g, w, **TOL[dtype], msg=lambda m: f"grad {name}: {m}")


def make_hx(kind, layers, bidir, proj, inp, dtype):
    LD = layers * (2 if bidir else 1)
    batch = () if inp == "unbatched" else (B,)
    h = torch.randn(LD, *batch, proj or H, dtype=dtype, requires_grad=True)
    if kind != "lstm":
        return h
    return h, torch.randn(LD, *batch, H, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("kind,layers,bidir,batch_first,proj,bias,inp,h0", list(grid()))
def test_parity_grid_fp64(kind, layers, bidir, batch_first, proj, bias, inp, h0):
    kw = dict(num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias)
    if proj:
        kw["proj_size"] = proj
    ref, ext = pair(kind, torch.float64, **kw)
    x = make_input(inp, batch_first, torch.float64)
    hx = make_hx(kind, layers, bidir, proj, inp, torch.float64) if h0 else None
    check_pair(ref, ext, x, inp, batch_first, hx, torch.float64)


@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
@pytest.mark.parametrize("inp", INPUTS)
@pytest.mark.parametrize("kind", KINDS)
def test_parity_fp32(kind, inp, backend):
    nn_cls, ext_cls, kw = classes(kind)
    kw = dict(kw, num_layers=2, bidirectional=True)
    if kind == "lstm":
        kw["proj_size"] = P
    ref = nn_cls(I, H, **kw)
    ext = ext_cls(I, H, **kw, backend=backend)
    ext.load_state_dict(ref.state_dict())
    x = make_input(inp, False, torch.float32)
    hx = make_hx(kind, 2, True, P if kind == "lstm" else 0, inp, torch.float32)
    check_pair(ref, ext, x, inp, False, hx, torch.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_same_parameters_names_shapes_and_init(kind):
    nn_cls, ext_cls, extra = classes(kind)
    kw = dict(extra, num_layers=2, bidirectional=True, **({"proj_size": 2} if kind == "lstm" else {}))
    torch.manual_seed(3)
    ref = nn_cls(I, H, **kw)
    torch.manual_seed(3)
    ext = ext_cls(I, H, **kw)
    assert list(ref.state_dict()) == list(ext.state_dict())
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), ext.named_parameters()):
        assert n1 == n2 and p1.shape == p2.shape
        assert torch.equal(p1, p2), n1
    assert [[p.shape for p in ws] for ws in ref.all_weights] == [[p.shape for p in ws] for ws in ext.all_weights]
    assert repr(ref) == repr(ext)
    assert getattr(ref, "mode") == getattr(ext, "mode")
    if kind.startswith("rnn_"):
        assert ref.nonlinearity == ext.nonlinearity


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_both_ways(kind):
    ref, ext = pair(kind, torch.float32, num_layers=2)
    nn_cls, _, extra = classes(kind)
    back = nn_cls(I, H, num_layers=2, **extra)
    back.load_state_dict(ext.state_dict())
    for a, b in zip(ref.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)


def test_default_constructor_arguments_match_nn():
    import inspect

    for ours, theirs in ((rnn_ext.LSTMCell, nn.LSTMCell), (rnn_ext.GRUCell, nn.GRUCell)):
        a = inspect.signature(ours).parameters
        b = inspect.signature(theirs).parameters
        for name, p in b.items():
            assert name in a and a[name].default == p.default, (ours, name)
    lstm = rnn_ext.LSTM(3, 4)
    for attr, value in dict(num_layers=1, bias=True, batch_first=False, dropout=0.0,
                            bidirectional=False, proj_size=0).items():
        assert getattr(lstm, attr) == value == getattr(nn.LSTM(3, 4), attr)


# The constructor signatures of RNN and RNNCell (positional and keyword) are
# checked with every other module's in test_dropin.py.


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_only_in_training_and_deterministic(kind):
    ref, ext = pair(kind, torch.float64, num_layers=3, dropout=0.5)
    x = torch.randn(T, B, I, dtype=torch.float64)
    ref.eval(), ext.eval()
    torch.testing.assert_close(ext(x)[0], ref(x)[0], **TOL[torch.float64])
    ext.train()
    torch.manual_seed(7)
    a = ext(x)[0]
    torch.manual_seed(7)
    b = ext(x)[0]
    torch.manual_seed(8)
    c = ext(x)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, ref(x)[0])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_cells(kind, with_hx, batched, bias):
    nn_cls, ext_cls, extra = cell_classes(kind)
    ref = nn_cls(I, H, bias=bias, **extra).double()
    ext = ext_cls(I, H, bias=bias, **extra).double()
    assert repr(ref) == repr(ext)
    ext.load_state_dict(ref.state_dict())
    batch = (B,) if batched else ()
    x = torch.randn(*batch, I, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(*batch, H, dtype=torch.float64, requires_grad=True)
              for _ in range(2 if kind == "lstm" else 1)] if with_hx else []
    hx = (tuple(states) if kind == "lstm" else states[0]) if with_hx else None
    want, got = ref(x, hx), ext(x, hx)
    want = list(want) if kind == "lstm" else [want]
    got = list(got) if kind == "lstm" else [got]
    wrt = [x] + states + list(ref.parameters())
    wrt_ext = [x] + states + list(ext.parameters())
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, **TOL[torch.float64])
    loss_w = sum((w * (k + 1)).sum() for k, w in enumerate(want))
    loss_g = sum((g * (k + 1)).sum() for k, g in enumerate(got))
    for a, b in zip(torch.autograd.grad(loss_g, wrt_ext), torch.autograd.grad(loss_w, wrt)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("kind", ["lstm", "rnn_relu"])
def test_cells_over_a_sequence_match_the_layer(kind):
    torch.manual_seed(0)
    _, layer_cls, extra = classes(kind)
    _, cell_cls, _ = cell_classes(kind)
    layer = layer_cls(I, H, **extra).double()
    cell = cell_cls(I, H, **extra).double()
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in layer.state_dict().items()})
    x = torch.randn(T, B, I, dtype=torch.float64)
    y, _ = layer(x)
    hx = None
    for t in range(T):
        hx = cell(x[t], hx)
        torch.testing.assert_close(hx[0] if kind == "lstm" else hx, y[t])


class Tagger(nn.Module):
    """Embedding -> LSTM -> Linear, like the part-of-speech tutorial."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.lstm = nn.LSTM(6, 8)
        self.head = nn.Linear(8, 5)
        self.cell = nn.GRUCell(5, 5)

    def forward(self, words):
        y, _ = self.lstm(self.emb(words).unsqueeze(1))
        logits = self.head(y.squeeze(1))
        return torch.log_softmax(self.cell(logits), dim=-1)


def test_convert_gives_same_loss_and_gradients():
    torch.manual_seed(0)
    model = Tagger().double()
    original = copy.deepcopy(model)
    converted = rnn_ext.convert(model)
    assert isinstance(converted.lstm, rnn_ext.LSTM) and isinstance(converted.cell, rnn_ext.GRUCell)
    words, tags = torch.randint(0, 20, (7,)), torch.randint(0, 5, (7,))
    losses, grads = [], []
    for m in (original, converted):
        loss = nn.functional.nll_loss(m(words), tags)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(m.parameters())))
    torch.testing.assert_close(losses[1], losses[0])
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b)


def test_convert_keeps_parameters_device_dtype_and_mode():
    model = nn.Sequential(nn.LSTM(3, 4, num_layers=2, proj_size=2, dropout=0.1), ).to(torch.float64)
    model.eval()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rnn_ext.convert(model, backend="reference")
    lstm = model[0]
    assert isinstance(lstm, rnn_ext.LSTM) and lstm.backend == "reference"
    assert not lstm.training and lstm.dropout == 0.1 and lstm.proj_size == 2
    assert all(a is b for a, b in zip(params, lstm.parameters()))  # optimizer still valid
    lstm(torch.randn(2, 1, 3, dtype=torch.float64))[0].sum().backward()
    before = params[0].detach().clone()
    optimizer.step()
    assert not torch.equal(before, params[0])
    assert rnn_ext.convert(nn.GRU(2, 3)).__class__ is rnn_ext.GRU


class Elman(nn.Module):
    """The tutorials' character-level classifier: nn.RNN (relu, two layers,
    batch-first) and an nn.RNNCell decoder step."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 6, num_layers=2, nonlinearity="relu", batch_first=True)
        self.cell = nn.RNNCell(6, 5, nonlinearity="tanh")

    def forward(self, x):
        y, h = self.rnn(x)
        return self.cell(y[:, -1], None).sum() + h.sum()


def test_convert_and_to_torch_rnn_round_trip():
    torch.manual_seed(0)
    model = Elman().double()
    params = list(model.parameters())
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    want = model(x)
    want_g = torch.autograd.grad(want, params)
    rnn_ext.convert(model)
    assert type(model.rnn) is rnn_ext.RNN and type(model.cell) is rnn_ext.RNNCell
    assert model.rnn.nonlinearity == "relu" and model.rnn.num_layers == 2 and model.rnn.batch_first
    assert all(a is b for a, b in zip(params, model.parameters()))
    got = model(x)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, params), want_g):
        torch.testing.assert_close(a, b)
    rnn_ext.to_torch(model)
    assert type(model.rnn) is nn.RNN and type(model.cell) is nn.RNNCell
    assert model.rnn.nonlinearity == "relu" and model.cell.nonlinearity == "tanh"
    torch.testing.assert_close(model(x), want)


def test_to_torch_reverses_convert():
    model = nn.Sequential(nn.GRU(3, 4, bidirectional=True), nn.Linear(8, 2))
    x = torch.randn(5, 2, 3)
    want = model[0](x)[0]
    back = rnn_ext.to_torch(rnn_ext.convert(model))
    assert type(back[0]) is nn.GRU
    torch.testing.assert_close(back[0](x)[0], want)


# ---------------------------------------------------------------- bad input
def _both_raise(make_call):
    """Call the same thing on nn and rnn_ext: both must raise, same type."""
    errors = []
    for lib in (nn, rnn_ext):
        with pytest.raises(Exception) as info:
            make_call(lib)
        errors.append(info)
    assert errors[0].type is errors[1].type, (errors[0].value, errors[1].value)
    return str(errors[1].value)


BAD_CALLS = {
    "h0 wrong shape": lambda lib: lib.LSTM(I, H)(torch.randn(T, B, I), (torch.randn(1, B + 1, H), torch.randn(1, B, H))),
    "c0 wrong shape": lambda lib: lib.LSTM(I, H)(torch.randn(T, B, I), (torch.randn(1, B, H), torch.randn(1, B, H + 1))),
    "gru h0 wrong layers": lambda lib: lib.GRU(I, H, num_layers=2)(torch.randn(T, B, I), torch.randn(1, B, H)),
    "4-D input": lambda lib: lib.GRU(I, H)(torch.randn(T, B, I, 1)),
    "wrong input size": lambda lib: lib.LSTM(I, H)(torch.randn(T, B, I + 1)),
    "dtype mismatch": lambda lib: lib.LSTM(I, H)(torch.randn(T, B, I, dtype=torch.float64)),
    "unbatched with 3-D h0": lambda lib: lib.LSTM(I, H)(torch.randn(T, I), (torch.randn(1, B, H), torch.randn(1, B, H))),
    "proj >= hidden": lambda lib: lib.LSTM(I, H, proj_size=H),
    "dropout > 1": lambda lib: lib.GRU(I, H, dropout=1.5),
    "hidden 0": lambda lib: lib.LSTM(I, 0),
    "bias not bool": lambda lib: lib.LSTM(I, H, bias=1),
    "cell 3-D input": lambda lib: lib.LSTMCell(I, H)(torch.randn(1, B, I)),
    "cell 3-D hidden": lambda lib: lib.GRUCell(I, H)(torch.randn(B, I), torch.randn(1, B, H)),
    "cell wrong input size": lambda lib: lib.GRUCell(I, H)(torch.randn(B, I + 2)),
    "cell wrong hidden size": lambda lib: lib.LSTMCell(I, H)(torch.randn(B, I), (torch.randn(B, H + 1), torch.randn(B, H))),
    "rnn unknown nonlinearity": lambda lib: lib.RNN(I, H, nonlinearity="sigmoid"),
    "rnn h0 wrong shape": lambda lib: lib.RNN(I, H)(torch.randn(T, B, I), torch.randn(1, B + 1, H)),
    "rnn wrong input size": lambda lib: lib.RNN(I, H, nonlinearity="relu")(torch.randn(T, B, I + 1)),
    "rnn 4-D input": lambda lib: lib.RNN(I, H)(torch.randn(T, B, I, 1)),
    "rnn dtype mismatch": lambda lib: lib.RNN(I, H)(torch.randn(T, B, I, dtype=torch.float64)),
    "rnncell unknown nonlinearity": lambda lib: lib.RNNCell(I, H, nonlinearity="sigmoid")(torch.randn(B, I)),
    "rnncell 3-D input": lambda lib: lib.RNNCell(I, H)(torch.randn(1, B, I)),
    "rnncell wrong input size": lambda lib: lib.RNNCell(I, H)(torch.randn(B, I + 2)),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_rejected_like_nn(name):
    message = _both_raise(BAD_CALLS[name])
    assert len(message) > 10


def test_backend_argument():
    x = torch.randn(T, B, I)
    with pytest.raises(ValueError, match="unknown backend"):
        rnn_ext.LSTM(I, H, backend="cudnn")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run"):
        rnn_ext.GRU(I, H, backend="cuda")(x)
    a = rnn_ext.LSTM(I, H, backend="cpu")
    b = rnn_ext.LSTM(I, H, backend="reference")
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x)[0], b(x)[0])
    assert rnn_ext.backends.resolve("auto", "cpu", torch.float32) == "cpu"
