"""The pair ops (rnn_ext::{lstm,gru,rnn}_pair_{forward,infer,backward}): both
directions of a bidirectional layer in one op call, stacked on a leading
dimension of 2.  On the CPU they run on one team of workers
(cpu::run_pair), or with RNN_EXT_CPU_PAIR=0 one direction after the other:
either way bitwise the two single-direction calls where each direction has
the same workers, the fp64 reference's numbers, and the single-direction
ops' autograd, fake implementation and errors."""
import contextlib

import pytest
import torch

import rnn_ext
from _poison import poisoned_allocations
from rnn_ext import _C, functional, reference

ops = torch.ops.rnn_ext
KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
# T, B, H, P, lengths: H = 19 is cut unevenly for 2 workers; the unsorted
# lengths (with a 0) keep rows past their end.
CASES = [(5, 3, 19, 0, None), (5, 4, 12, 5, [5, 2, 0, 4])]
IDS = ["h19", "h12-proj-lengths"]


@contextlib.contextmanager
def cpu_workers(n):
    previous = _C._set_cpu_workers(n)
    try:
        yield
    finally:
        _C._set_cpu_workers(previous)


def _nonlinearity(kind):
    return kind[4:] if kind.startswith("rnn_") else None


def _inputs(kind, case, dtype=torch.float64, grad=False, seed=0):
    """The pair op's stacked tensor arguments and lengths."""
    T, B, H, P, lengths = case
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        t = (torch.randn(2, *shape, generator=g, dtype=torch.float64) * scale).to(dtype)
        return t.requires_grad_(grad)

    L = torch.tensor(lengths) if lengths else None
    if kind == "lstm":
        hout = P or H
        return [r(T, B, 4 * H), r(4 * H, hout, scale=0.4), r(4 * H),
                r(P, H, scale=0.4) if P else None, r(B, hout), r(B, H)], L
    G = 3 if kind == "gru" else 1
    return [r(T, B, G * H), r(G * H, H, scale=0.4), r(G * H), r(B, H)], L


def _cases(kind):
    return [c for c in CASES if kind == "lstm" or c[3] == 0] + \
        ([(5, 4, 12, 0, [5, 2, 0, 4])] if kind != "lstm" else [])


def _forward(kind, args, L, pair):
    """The pair forward op, or (pair=False) the single-direction op on each
    half with the results stacked."""
    nl = () if kind in ("lstm", "gru") else (_nonlinearity(kind),)
    base = kind.split("_")[0]
    if pair:
        return getattr(ops, f"{base}_pair_forward")(*args, L, *nl)
    single = getattr(ops, f"{base}_forward")
    halves = [single(*(None if a is None else a[d] for a in args), L, *nl) for d in (0, 1)]
    return tuple(torch.stack(p) for p in zip(*halves))


def _backward(kind, args, L, out, grads, pair):
    """The pair backward op on the forward's results, or the single ops'."""
    base = kind.split("_")[0]
    nl = () if kind in ("lstm", "gru") else (_nonlinearity(kind),)
    if kind == "lstm":
        gx, w_hh, b_hh, w_hr, h0, c0 = args
        y, h_n, c_n, ws, proj_in = out
        gy, gh, gc, gws = grads
        bargs = (gy, gh, gc, w_hh, w_hr, h0, c0, y, ws, proj_in, L, gws)
    else:
        gx, w_hh, b_hh, h0 = args
        y, h_n, ws = out
        gy, gh, gws = grads
        bargs = (gy, gh, w_hh, h0, y, ws, L, gws)
    if pair:
        return getattr(ops, f"{base}_pair_backward")(*bargs, *nl)
    single = getattr(ops, f"{base}_backward")
    # L stays whole; every other tensor is split.
    halves = [single(*(a if (a is None or a is L) else a[d] for a in bargs), *nl) for d in (0, 1)]
    return tuple(torch.stack(p) for p in zip(*halves))


def _grads(kind, out, seed=1):
    g = torch.Generator().manual_seed(seed)
    r = lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)  # noqa: E731
    return [r(t) for t in out[:4 if kind == "lstm" else 3]]


@pytest.mark.parametrize("pair_env", ["1", "0"], ids=["one-team", "one-after-other"])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_pair_bitwise_single_calls(kind, workers, pair_env, monkeypatch):
    """With the same workers per direction, the pair op gives bitwise what
    two single-direction calls give, forward and backward, fp32 and fp64."""
    monkeypatch.setenv("RNN_EXT_CPU_PAIR", pair_env)
    for dtype in (torch.float64, torch.float32):
        for case in _cases(kind):
            args, L = _inputs(kind, case, dtype)
            with cpu_workers(workers):
                got = _forward(kind, args, L, pair=True)
                want = _forward(kind, args, L, pair=False)
                for g, w in zip(got, want):
                    assert torch.equal(g, w), (kind, case, dtype)
                grads = _grads(kind, got)
                got_b = _backward(kind, args, L, got, grads, pair=True)
                want_b = _backward(kind, args, L, want, grads, pair=False)
            for g, w in zip(got_b, want_b):
                assert g.shape == w.shape and torch.equal(g, w), (kind, case, dtype)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_pair_on_stepwise_loops(kind):
    """With the CPU ops on the stepwise loop (the CUDA backend's default
    loop), the pair op runs it on each half: bitwise the single calls."""
    previous = _C._set_cpu_stepwise(True)
    try:
        for case in _cases(kind):
            args, L = _inputs(kind, case)
            got = _forward(kind, args, L, pair=True)
            want = _forward(kind, args, L, pair=False)
            grads = _grads(kind, got)
            got_b = _backward(kind, args, L, got, grads, pair=True)
            want_b = _backward(kind, args, L, want, grads, pair=False)
            for g, w in zip((*got, *got_b), (*want, *want_b)):
                assert torch.equal(g, w), (kind, case)
    finally:
        _C._set_cpu_stepwise(previous)


@pytest.mark.parametrize("kind", KINDS)
def test_pair_matches_reference(kind):
    """Default workers, outputs poisoned: both directions as the fp64
    reference computes them (forward with workspace, and inference)."""
    base = kind.split("_")[0]
    nl = () if kind in ("lstm", "gru") else (_nonlinearity(kind),)
    ref = {"lstm": reference.lstm_reference, "gru": reference.gru_reference,
           "rnn": reference.rnn_reference}[base]
    for case in _cases(kind):
        args, L = _inputs(kind, case)
        with poisoned_allocations():
            got = getattr(ops, f"{base}_pair_forward")(*args, L, *nl)
            got_infer = getattr(ops, f"{base}_pair_infer")(*args, L, *nl)
        for d in (0, 1):
            want = ref(*(None if a is None else a[d] for a in args), L, *nl)
            for g, w in zip(got, want):
                torch.testing.assert_close(g[d], w, rtol=1e-10, atol=1e-12)
            for g, w in zip(got_infer, want):
                torch.testing.assert_close(g[d], w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_pair_gradients_match_reference(kind):
    """The pair backward (through functional.*_pair, compiled cpu backend)
    against autograd through the fp64 reference, with the workspace's
    gradient too."""
    base = kind.split("_")[0]
    case = (4, 3, 6, 3 if kind == "lstm" else 0, [4, 1, 3])
    args, L = _inputs(kind, case, grad=True)
    kw = {} if kind in ("lstm", "gru") else {"nonlinearity": _nonlinearity(kind)}
    fn = getattr(functional, f"{base}_pair")
    out = fn(*args, lengths=L, backend="cpu", **kw)
    grads = _grads(kind, out)
    got = torch.autograd.grad(out, [a for a in args if a is not None], grads)
    ref_out = functional._each_direction(
        lambda *a: getattr(reference, f"{base}_reference")(*a, L, *kw.values()), args)
    want = torch.autograd.grad(ref_out, [a for a in args if a is not None], grads)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_pair_gradcheck(kind):
    """fp64 gradcheck on tiny shapes; gradgradcheck (double backward: the
    reference per direction, one code path for the three cells) on RNN's."""
    base = kind.split("_")[0]
    case = (3, 2, 3, 2 if kind == "lstm" else 0, [3, 1])
    args, L = _inputs(kind, case, grad=True)
    kw = {} if kind in ("lstm", "gru") else {"nonlinearity": _nonlinearity(kind)}
    fn = getattr(functional, f"{base}_pair")
    present = [a for a in args if a is not None]

    def f(*xs):
        it = iter(xs)
        full = [None if a is None else next(it) for a in args]
        return fn(*full, lengths=L, backend="cpu", **kw)

    assert torch.autograd.gradcheck(f, present)
    if kind == "rnn_tanh":
        assert torch.autograd.gradgradcheck(f, present)


@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_pair_opcheck(kind, grad):
    base = kind.split("_")[0]
    nl = () if kind in ("lstm", "gru") else (_nonlinearity(kind),)
    case = (3, 2, 4, 3 if kind == "lstm" else 0, [3, 1])
    args, L = _inputs(kind, case, grad=grad)
    fwd = (*args, L, *nl)
    torch.library.opcheck(getattr(ops, f"{base}_pair_forward"), fwd)
    if not grad:
        torch.library.opcheck(getattr(ops, f"{base}_pair_infer"), fwd)
    with torch.no_grad():
        out = getattr(ops, f"{base}_pair_forward")(*fwd)
    detached = [None if a is None else a.detach() for a in args]
    grads = _grads(kind, out)
    if kind == "lstm":
        bwd = (*grads[:3], detached[1], detached[3], detached[4], detached[5], out[0], out[3],
               out[4], L, grads[3])
    else:
        bwd = (*grads[:2], detached[1], detached[3], out[0], out[2], L, grads[2])
    torch.library.opcheck(getattr(ops, f"{base}_pair_backward"), (*bwd, *nl))


def test_pair_compiles():
    """torch.compile traces the pair op (its fake implementation) with no
    graph break and gives the eager numbers."""
    args, L = _inputs("lstm", CASES[1], grad=False)
    fn = lambda *a: functional.lstm_pair(*a, lengths=L, backend="cpu")  # noqa: E731
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    for g, w in zip(compiled(*args), fn(*args)):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_pair_bad_inputs():
    args, L = _inputs("lstm", CASES[0])
    gx, w_hh, b_hh, w_hr, h0, c0 = args
    with pytest.raises(RuntimeError, match=r"lstm_pair_forward: expected input_gates of shape "
                                           r"\[2, T, B, 4H\].*leading dimension of 2"):
        ops.lstm_pair_forward(gx[:1], w_hh[:1], b_hh[:1], None, h0[:1], c0[:1], None)
    with pytest.raises(RuntimeError, match=r"lstm_pair_forward: expected h0 of shape \[2, B"):
        ops.lstm_pair_forward(gx, w_hh, b_hh, None, h0[0], c0, None)
    with pytest.raises(RuntimeError, match=r"lstm_pair_forward: expected w_hh of shape"):
        ops.lstm_pair_forward(gx, w_hh[:, :, :-1], b_hh, None, h0, c0, None)
    with pytest.raises(RuntimeError, match=r"lstm_pair_forward: lengths must have shape"):
        ops.lstm_pair_forward(gx, w_hh, b_hh, None, h0, c0, torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match=r"lengths\[0\] = 9 is out of range"):
        ops.lstm_pair_forward(gx, w_hh, b_hh, None, h0, c0, torch.tensor([9, 1, 1]))
    with pytest.raises(RuntimeError, match=r"gru_pair_forward: expected w_hh of shape \[2, 3H, H\]"):
        g_args, _ = _inputs("gru", CASES[0])
        ops.gru_pair_forward(g_args[0], g_args[1][0], g_args[2], g_args[3], None)
    with pytest.raises(RuntimeError, match=r"rnn_pair_forward: unknown nonlinearity 'sigmoid'"):
        r_args, _ = _inputs("rnn_tanh", CASES[0])
        ops.rnn_pair_forward(*r_args, None, "sigmoid")
    out = ops.lstm_pair_forward(*args, None)
    with pytest.raises(RuntimeError, match=r"lstm_pair_backward: expected workspace of shape"):
        ops.lstm_pair_backward(out[0], out[1], out[2], w_hh, None, h0, c0, out[0], out[3][0],
                               out[4], None, None)
    with pytest.raises(RuntimeError, match=r"rnn_ext.lstm_pair: h0 must have a leading dimension of 2"):
        functional.lstm_pair(gx, w_hh, b_hh, None, h0[0], c0, backend="cpu")
    with pytest.raises(RuntimeError, match=r"rnn_ext.lstm_pair: expected w_hh of shape"):
        functional.lstm_pair(gx, w_hh[:, :, :-1], b_hh, None, h0, c0, backend="cpu")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_functional_pair_backends(backend):
    """Every backend's pair call is its two single-direction calls (the
    reference runs them; cpu runs the pair op), states None meaning zeros,
    need_workspace=False keeping none without gradients."""
    args, L = _inputs("gru", (4, 3, 5, 0, [4, 0, 2]))
    gx, w_hh, b_hh, _ = args
    got = functional.gru_pair(gx, w_hh, b_hh, None, lengths=L, backend=backend)
    for d in (0, 1):
        want = functional.gru(gx[d], w_hh[d], b_hh[d], None, lengths=L, backend="reference")
        for g, w in zip(got, want):
            torch.testing.assert_close(g[d], w, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        y, h_n, ws = functional.gru_pair(gx, w_hh, b_hh, None, lengths=L, backend=backend,
                                         need_workspace=False)
    torch.testing.assert_close(y, got[0], rtol=1e-10, atol=1e-12)
    if backend == "cpu":
        assert ws is None


@pytest.mark.parametrize("device", ["cpu", "cpu-pair", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_bidirectional_module_calls_pair(mode, device, monkeypatch):
    """A bidirectional module on the cuda backend runs each layer as one pair
    call, on the cpu backend as one call per direction (measured faster
    there, modules._pairs_directions), with the numbers of torch.nn either
    way (packed input, lengths, two layers, projection for LSTM).
    "cpu-pair": the modules' pair path (the GPU's) run on the CPU."""
    pair = device != "cpu"
    if device == "cpu-pair":
        device = "cpu"
        monkeypatch.setattr(rnn_ext.modules._RNNBase, "_pairs_directions", lambda self, x: True)
    calls = []
    name = f"{mode.lower()}_pair"
    original = getattr(functional, name)

    def counted(*a, **k):
        calls.append(1)
        return original(*a, **k)

    monkeypatch.setattr(functional, name, counted)
    kw = {"proj_size": 3} if mode == "LSTM" else {}
    ours = getattr(rnn_ext, mode)(4, 6, num_layers=2, bidirectional=True, dtype=torch.float64,
                                  backend=device, device=device, **kw)
    theirs = getattr(torch.nn, mode)(4, 6, num_layers=2, bidirectional=True, dtype=torch.float64,
                                     device=device, **kw)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float64, device=device)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 2, 4]),
                                                     enforce_sorted=False)
    for inp in (x, packed):
        calls.clear()
        got, got_h = ours(inp)
        want, want_h = theirs(inp)
        assert len(calls) == (2 if pair else 0)  # one per layer on the GPU
        if isinstance(inp, torch.nn.utils.rnn.PackedSequence):
            got, want = got.data, want.data
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        for g, w in zip(got_h if mode == "LSTM" else [got_h], want_h if mode == "LSTM" else [want_h]):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    # The internals (gates, cell states) from the pair path equal the
    # per-direction path's.
    _, _, inside = ours.forward_with_internals(packed)
    monkeypatch.setattr(rnn_ext.modules._RNNBase, "_pairs_directions", lambda self, x: False)
    _, _, alone = ours.forward_with_internals(packed)
    for a, b in zip(inside, alone):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.cuda
@pytest.mark.parametrize("persistent", ["0", "force"], ids=["stepwise", "persistent-pair"])
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_pair_matches_reference(kind, persistent, monkeypatch):
    """On a GPU in fp64: the pair ops by default (each half on the stepwise
    loop) and with RNN_EXT_CUDA_PERSISTENT=force (both directions in one
    cooperative launch, *_persistent_pair) give the reference's outputs and
    gradients, outputs poisoned.  NOT YET RUN ON A GPU."""
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", persistent)
    base = kind.split("_")[0]
    kw = {} if kind in ("lstm", "gru") else {"nonlinearity": _nonlinearity(kind)}
    fn = getattr(functional, f"{base}_pair")
    for case in _cases(kind):
        args, L = _inputs(kind, case)
        args = [None if a is None else a.cuda().requires_grad_() for a in args]
        present = [a for a in args if a is not None]
        with poisoned_allocations():
            out = fn(*args, lengths=L, backend="cuda", **kw)
        grads = _grads(kind, out)
        got = torch.autograd.grad(out, present, grads)
        ref_out = functional._each_direction(
            lambda *a: getattr(reference, f"{base}_reference")(*a, L, *kw.values()), args)
        want = torch.autograd.grad(ref_out, present, grads)
        for g, w in zip((*out, *got), (*ref_out, *want)):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_module_pair_path_gradients(mode, bias, monkeypatch):
    """The modules' pair path (the GPU's; here on the CPU) projects both
    directions in one batched product of the input and its reversal
    (_pair_inputs): its values and every gradient are torch.nn's, with and
    without biases, batch_first included."""
    monkeypatch.setattr(rnn_ext.modules._RNNBase, "_pairs_directions", lambda self, x: True)
    kw = {"proj_size": 3} if mode == "LSTM" else {}
    ours = getattr(rnn_ext, mode)(4, 6, num_layers=2, bidirectional=True, bias=bias,
                                  batch_first=True, dtype=torch.float64, backend="cpu", **kw)
    theirs = getattr(torch.nn, mode)(4, 6, num_layers=2, bidirectional=True, bias=bias,
                                     batch_first=True, dtype=torch.float64, **kw)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    got, _ = ours(x)
    want, _ = theirs(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    dy = torch.randn_like(got)
    got_grads = torch.autograd.grad(got, [x, *ours.parameters()], dy)
    want_grads = torch.autograd.grad(want, [x, *theirs.parameters()], dy)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
