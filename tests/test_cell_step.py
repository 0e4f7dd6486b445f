"""The cells' one-op step (issue 13, item 12): in plain eager mode on the CPU,
LSTMCell, GRUCell and RNNCell run one op per call (rnn_ext::lstm_cell,
gru_cell, rnn_cell: input projection, fused step and, in C++, autograd).
These tests check that the step is taken where it should be and not
elsewhere, that it gives nn's numbers and gradients (double backward
included), that what changes a module's weights is seen at the next call,
that errors stay nn's, and opcheck of the new ops.  Its cost is measured
by `python -m benchmarks.overhead`, never here."""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import rnn_ext
from _utils import TOL, assert_all_close, outputs_and_grads

ops = torch.ops.rnn_ext
CELLS = ["LSTMCell", "GRUCell", "RNNCell_tanh", "RNNCell_relu"]
ONE_OP = {"LSTMCell": "lstm_cell", "GRUCell": "gru_cell", "RNNCell": "rnn_cell"}


class _OpLog(TorchDispatchMode):
    """The names of the ops that reach the kernels."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def _pair(cell, I=5, H=4, bias=True, dtype=torch.float64, backend="auto"):
    kind, _, nonlinearity = cell.partition("_")
    extra = {"nonlinearity": nonlinearity} if nonlinearity else {}
    torch.manual_seed(0)
    ref = getattr(nn, kind)(I, H, bias=bias, dtype=dtype, **extra)
    ext = getattr(rnn_ext, kind)(I, H, bias=bias, dtype=dtype, backend=backend, **extra)
    ext.load_state_dict(ref.state_dict())
    return kind, ref, ext


def _args(kind, B, I, H, dtype, with_state, grad):
    x = torch.randn(B, I, dtype=dtype, requires_grad=grad)
    if not with_state:
        return x, None, [x]
    states = [torch.randn(B, H, dtype=dtype, requires_grad=grad) for _ in range(2 if kind == "LSTMCell" else 1)]
    return x, (tuple(states) if kind == "LSTMCell" else states[0]), [x, *states]


def _outputs(out):
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_one_op_step_is_taken_in_eager_mode(cell, backend):
    kind, _, ext = _pair(cell, backend=backend)
    x, hx, _ = _args(kind, 3, 5, 4, torch.float64, True, grad=False)
    with torch.no_grad(), _OpLog() as log:
        ext(x, hx)
    assert log.names == [f"rnn_ext::{ONE_OP[kind]}"]
    with _OpLog() as log:  # parameters require grad: the op's forward, one autograd node
        out = _outputs(ext(x, hx))
    # (autograd detaches the outputs it saves for backward)
    assert [n for n in log.names if n != "aten::detach"] == [f"rnn_ext::{ONE_OP[kind]}_forward"]
    assert f"{kind}Function" in out[0].grad_fn.name()
    with _OpLog() as log:
        sum(o.sum() for o in out).backward()
    assert f"rnn_ext::{ONE_OP[kind]}_backward" in log.names


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell_tanh"])
def test_general_path_where_the_one_op_step_does_not_apply(cell):
    """Unbatched input, the reference backend, autocast and torch.func run
    the general path (the sequence ops), as before."""
    kind, ref, ext = _pair(cell)
    one_op = f"rnn_ext::{ONE_OP[kind]}"

    def ops_of(module, x, hx):
        with torch.no_grad(), _OpLog() as log:
            module(x, hx)
        return log.names

    x, hx, _ = _args(kind, 3, 5, 4, torch.float64, True, grad=False)
    unbatched = tuple(s[0] for s in hx) if kind == "LSTMCell" else hx[0]
    assert one_op not in ops_of(ext, x[0], unbatched)
    ext.backend = "reference"
    assert not any(n.startswith("rnn_ext::") for n in ops_of(ext, x, hx))
    ext.backend = "auto"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert one_op not in ops_of(ext, x, hx)
    params = dict(ext.named_parameters())
    grads = torch.func.grad(lambda p: _outputs(torch.func.functional_call(ext, p, (x, hx)))[0].sum())(params)
    want = torch.autograd.grad(_outputs(ref(x, hx))[0].sum(), [getattr(ref, n) for n in params])
    assert_all_close(list(grads.values()), list(want), torch.float64)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("B", [1, 3])
def test_one_op_step_matches_nn(cell, bias, with_state, dtype, B):
    kind, ref, ext = _pair(cell, bias=bias, dtype=dtype)
    x, hx, inputs = _args(kind, B, 5, 4, dtype, with_state, grad=True)
    with torch.no_grad():
        assert_all_close(_outputs(ext(x, hx)), _outputs(ref(x, hx)), dtype)
    wrt = inputs + list(ref.parameters())
    got = outputs_and_grads(_outputs(ext(x, hx)), inputs + list(ext.parameters()))
    want = outputs_and_grads(_outputs(ref(x, hx)), wrt)
    assert_all_close(got[0] + got[1], want[0] + want[1], dtype)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_one_op_step_gradcheck_and_double_backward(cell, bias):
    """fp64 gradcheck and gradgradcheck through the module: backward with
    create_graph=True differentiates the recomputed step."""
    kind, _, ext = _pair(cell, I=3, H=2, bias=bias)
    x, hx, inputs = _args(kind, 2, 3, 2, torch.float64, True, grad=True)
    params = list(ext.parameters())

    def f(*tensors):
        x, *states = tensors[:len(inputs)]
        return ext(x, tuple(states) if kind == "LSTMCell" else states[0])

    assert torch.autograd.gradcheck(f, (*inputs, *params))
    assert torch.autograd.gradgradcheck(f, (*inputs, *params))


def test_double_backward_reaches_only_what_requires_grad():
    """A gradient penalty on the input: the second derivative with respect
    to the weights matches nn's, and an input that needs no gradient gets
    none."""
    kind, ref, ext = _pair("LSTMCell")
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 4, dtype=torch.float64)
    c = torch.randn(3, 4, dtype=torch.float64)

    def penalty(module):
        out = module(x, (h, c))
        (gx,) = torch.autograd.grad(out[0].sum() + out[1].sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), list(module.parameters()))

    assert_all_close(penalty(ext), penalty(ref), torch.float64)


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell_relu"])
def test_changed_weights_are_seen_at_the_next_call(cell):
    """Nothing about the weights is cached: load_state_dict, .to(dtype),
    replacing a parameter and weight_norm all show at the next call."""
    kind, ref, ext = _pair(cell, dtype=torch.float32)
    x, hx, _ = _args(kind, 2, 5, 4, torch.float32, True, grad=False)
    ext(x, hx)  # a first call, before every change

    torch.manual_seed(1)
    other = getattr(nn, kind)(5, 4, **({"nonlinearity": ref.nonlinearity} if kind == "RNNCell" else {}))
    ext.load_state_dict(other.state_dict())
    assert_all_close(_outputs(ext(x, hx)), _outputs(other(x, hx)), torch.float32)

    ext.double(), other.double()
    x64 = x.double()
    hx64 = tuple(s.double() for s in hx) if kind == "LSTMCell" else hx.double()
    assert_all_close(_outputs(ext(x64, hx64)), _outputs(other(x64, hx64)), torch.float64)

    new = torch.randn_like(ext.weight_hh)
    ext.weight_hh = nn.Parameter(new.clone())
    other.weight_hh = nn.Parameter(new.clone())
    assert_all_close(_outputs(ext(x64, hx64)), _outputs(other(x64, hx64)), torch.float64)

    nn.utils.parametrizations.weight_norm(ext, "weight_ih")
    nn.utils.parametrizations.weight_norm(other, "weight_ih")
    with torch.no_grad():
        ext.parametrizations.weight_ih.original0.mul_(2)
        other.parametrizations.weight_ih.original0.mul_(2)
    got = outputs_and_grads(_outputs(ext(x64, hx64)), list(ext.parameters()))
    want = outputs_and_grads(_outputs(other(x64, hx64)), list(other.parameters()))
    assert_all_close(got[0] + got[1], want[0] + want[1], torch.float64)


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell_tanh"])
def test_errors_stay_nns(cell):
    """What the op rejects goes the general path, which raises nn's errors:
    the same exception type as nn, and the same message as the general path
    (the reference backend) gives."""
    kind, ref, ext = _pair(cell, dtype=torch.float32)
    general = _pair(cell, dtype=torch.float32, backend="reference")[2]
    x, hx, _ = _args(kind, 3, 5, 4, torch.float32, True, grad=False)
    bad_batch = (tuple(s[:2] for s in hx) if kind == "LSTMCell" else hx[:2])
    cases = [(x.double(), hx), (x, bad_batch), (x[:, :4], hx), (x.long(), None)]
    if kind == "LSTMCell":
        cases.append((x, hx[0]))  # one tensor instead of a tuple
    for args in cases:
        with pytest.raises(Exception) as want:
            ref(*args)
        with pytest.raises(type(want.value)) as slow:
            general(*args)
        with pytest.raises(type(want.value)) as got:
            ext(*args)
        assert str(got.value) == str(slow.value)


def _cell_args(kind, grad, bias=True, B=2, I=3, H=4):
    G = {"LSTMCell": 4, "GRUCell": 3, "RNNCell": 1}[kind] * H

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=grad)

    states = (t(B, H), t(B, H)) if kind == "LSTMCell" else (t(B, H),)
    return (t(B, I), *states, t(G, I), t(G, H), t(G) if bias else None, t(G) if bias else None)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_cell_ops_opcheck(kind, grad, bias):
    name = ONE_OP[kind]
    extra = ("tanh",) if kind == "RNNCell" else ()
    args = _cell_args(kind, grad, bias) + extra
    torch.library.opcheck(getattr(ops, name), args)
    plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(getattr(ops, f"{name}_forward"), plain)
    h, *rest = getattr(ops, f"{name}_forward")(*plain)
    ws = rest[-1]
    n_states = 2 if kind == "LSTMCell" else 1
    grads = tuple(torch.randn_like(h) for _ in range(n_states))
    # backward: grads, input, states, w_ih, w_hh, h, workspace
    bwd = grads + plain[:1 + n_states] + plain[1 + n_states:3 + n_states] + (h, ws) + extra
    torch.library.opcheck(getattr(ops, f"{name}_backward"), bwd)


def test_cell_op_errors_name_the_problem():
    x, h, c, w_ih, w_hh, b_ih, b_hh = _cell_args("LSTMCell", False)
    with pytest.raises(RuntimeError, match=r"rnn_ext::lstm_cell: expected hx of shape \[2, 4\], got \[3, 4\]"):
        ops.lstm_cell(x, torch.zeros(3, 4, dtype=x.dtype), c, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(RuntimeError, match="rnn_ext::lstm_cell: w_ih has dtype Float but input has dtype Double"):
        ops.lstm_cell(x, h, c, w_ih.float(), w_hh, b_ih, b_hh)
    with pytest.raises(RuntimeError, match=r"rnn_ext::gru_cell: expected w_hh of shape \[3H, H\]"):
        ops.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(RuntimeError, match="rnn_ext::rnn_cell: unknown nonlinearity 'sigmoid'"):
        ops.rnn_cell(x, h, w_ih[:4], w_hh[:4], None, None, "sigmoid")
