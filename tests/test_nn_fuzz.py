"""Random configurations against torch.nn (hypothesis): module, layers,
direction, batch_first, bias, proj_size, odd sizes, padded / packed sorted /
packed unsorted / unbatched input, h0 given or not, train (with dropout,
same seed) or eval, and a CPU backend.  Outputs, final states and the
gradients of the input, the initial states and every parameter must match
nn's in fp64.

The modules come from rnn_ext.modules.PAIRS; constructor arguments nn's
signature has (proj_size, nonlinearity) are drawn where it has them.  The
example count is kept small for CI on 2 cores (derandomized, so a run is
reproducible)."""
import inspect
import typing

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnn_ext
from _utils import cpu_backends
from rnn_ext.modules import PAIRS

F64 = dict(rtol=1e-9, atol=1e-11)


def nn_parameters(nn_cls):
    overloads = [o for o in typing.get_overloads(nn_cls.__init__)
                 if not any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(o).parameters.values())]
    return inspect.signature(overloads[0] if overloads else nn_cls.__init__).parameters


@st.composite
def configs(draw):
    nn_cls, ext_cls = draw(st.sampled_from(PAIRS))
    cell = issubclass(ext_cls, rnn_ext.modules._CellBase)
    params = nn_parameters(nn_cls)
    I, H = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    kw = {"bias": draw(st.booleans())}
    if "nonlinearity" in params:
        kw["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    train = draw(st.booleans())
    if not cell:
        kw.update(num_layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
                  batch_first=draw(st.booleans()))
        if "proj_size" in params and H > 1 and draw(st.booleans()):
            kw["proj_size"] = draw(st.integers(1, H - 1))
        if train and kw["num_layers"] > 1:
            kw["dropout"] = draw(st.sampled_from([0.0, 0.3]))
    kinds = ["batched", "unbatched"] if cell else ["padded", "unbatched", "packed_sorted", "packed_unsorted"]
    inp = draw(st.sampled_from(kinds))
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 5))
    lengths = None
    if inp.startswith("packed"):
        lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
        lengths[draw(st.integers(0, B - 1))] = T  # the longest is T
        if inp == "packed_sorted":
            lengths.sort(reverse=True)
    return dict(nn_cls=nn_cls, ext_cls=ext_cls, cell=cell, I=I, H=H, kw=kw, train=train, inp=inp,
                B=B, T=T, lengths=lengths, h0=draw(st.booleans()), backend=draw(st.sampled_from(cpu_backends())))


def make_input(c):
    I, B, T = c["I"], c["B"], c["T"]
    if c["cell"]:
        return torch.randn(*((B,) if c["inp"] == "batched" else ()), I, dtype=torch.float64, requires_grad=True)
    if c["inp"] == "unbatched":
        return torch.randn(T, I, dtype=torch.float64, requires_grad=True)
    shape = (B, T, I) if c["kw"]["batch_first"] else (T, B, I)
    return torch.randn(shape, dtype=torch.float64, requires_grad=True)


def make_state(c, ext):
    """The initial state nn takes, or None; the list of its tensors."""
    if not c["h0"]:
        return None, []
    H = c["H"]
    has_cell = ext._has_cell_state
    if c["cell"]:
        batch = (c["B"],) if c["inp"] == "batched" else ()
        shapes = [(*batch, H)] * (2 if has_cell else 1)
    else:
        LD = c["kw"]["num_layers"] * (2 if c["kw"]["bidirectional"] else 1)
        batch = () if c["inp"] == "unbatched" else (c["B"],)
        shapes = [(LD, *batch, c["kw"].get("proj_size") or H)] + ([(LD, *batch, H)] if has_cell else [])
    states = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    return (tuple(states) if has_cell else states[0]), states


def flat(out):
    if isinstance(out, PackedSequence):
        return [out.data]
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flat(o)]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(configs())
def test_random_configurations_match_nn(c):
    torch.manual_seed(0)
    ref = c["nn_cls"](c["I"], c["H"], **c["kw"]).double().train(c["train"])
    ext = c["ext_cls"](c["I"], c["H"], **c["kw"], backend=c["backend"]).double().train(c["train"])
    ext.load_state_dict(ref.state_dict())
    x = make_input(c)
    hx, states = make_state(c, ext)

    def module_input():  # packed once per module: each backward frees its graph
        if c["lengths"] is None:
            return x
        return pack_padded_sequence(x, torch.tensor(c["lengths"]), batch_first=c["kw"]["batch_first"],
                                    enforce_sorted=c["inp"] == "packed_sorted")

    torch.manual_seed(1)
    want = flat(ref(module_input(), hx))
    torch.manual_seed(1)
    got = flat(ext(module_input(), hx))
    assert [t.shape for t in got] == [t.shape for t in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **F64)
    gen = torch.Generator().manual_seed(2)
    weights = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in want]
    wrt_ref = [x] + states + list(ref.parameters())
    wrt_ext = [x] + states + list(ext.parameters())
    g_want = torch.autograd.grad(sum((w * k).sum() for w, k in zip(want, weights)), wrt_ref, allow_unused=True)
    g_got = torch.autograd.grad(sum((g * k).sum() for g, k in zip(got, weights)), wrt_ext, allow_unused=True)
    names = ["input"] + [f"state{k}" for k in range(len(states))] + [n for n, _ in ref.named_parameters()]
    for name, g, w in zip(names, g_got, g_want):
        if w is None or g is None:
            assert (w is None or not w.any()) and (g is None or not g.any()), name
            continue
        torch.testing.assert_close(g, w, **F64, msg=lambda m: f"gradient of {name}: {m}")
