"""Looking inside: per-step gates and cell states from forward_with_internals,
and chunked state passing (whole sequence == chunks, forward and backward)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnn_ext
from _utils import cpu_backends

T, B, I, H = 6, 3, 4, 5
DT = torch.float64


def by_hand_lstm(m, x):
    """Gates and cell states of a 1-layer LSTM stepped with torch ops."""
    h = x.new_zeros(B, H)
    c = x.new_zeros(B, H)
    gates, cells = [], []
    for t in range(T):
        pre = x[t] @ m.weight_ih_l0.t() + m.bias_ih_l0 + h @ m.weight_hh_l0.t() + m.bias_hh_l0
        i, f, g, o = pre.chunk(4, 1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c = f * c + i * g
        h = o * c.tanh()
        gates.append(torch.stack([i, f, g, o], 1))
        cells.append(c)
    return torch.stack(gates), torch.stack(cells)


def by_hand_gru(m, x):
    h = x.new_zeros(B, H)
    gates = []
    for t in range(T):
        xr, xz, xn = (x[t] @ m.weight_ih_l0.t() + m.bias_ih_l0).chunk(3, 1)
        hr, hz, hn = (h @ m.weight_hh_l0.t() + m.bias_hh_l0).chunk(3, 1)
        r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
        n = (xn + r * hn).tanh()
        h = (1 - z) * n + z * h
        gates.append(torch.stack([r, z, n], 1))
    return torch.stack(gates)


@pytest.mark.parametrize("backend", cpu_backends())
def test_lstm_gates_and_cells_match_a_hand_written_loop(backend):
    m = rnn_ext.LSTM(I, H, backend=backend).double()
    x = torch.randn(T, B, I, dtype=DT)
    y, (h_n, c_n), inside = m.forward_with_internals(x)
    gates, cells = by_hand_lstm(m, x)
    assert inside.gates.shape == (1, T, B, 4, H) and inside.cell_states.shape == (1, T, B, H)
    torch.testing.assert_close(inside.gates[0], gates)
    torch.testing.assert_close(inside.cell_states[0], cells)
    torch.testing.assert_close(inside.cell_states[0, -1], c_n[0])


@pytest.mark.parametrize("backend", cpu_backends())
def test_gru_gates_match_a_hand_written_loop(backend):
    m = rnn_ext.GRU(I, H, backend=backend).double()
    x = torch.randn(T, B, I, dtype=DT)
    _, _, inside = m.forward_with_internals(x)
    assert inside.cell_states is None and inside.gates.shape == (1, T, B, 3, H)
    torch.testing.assert_close(inside.gates[0], by_hand_gru(m, x))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_activations_match_a_hand_written_loop(nonlinearity, backend):
    m = rnn_ext.RNN(I, H, nonlinearity=nonlinearity, backend=backend).double()
    x = torch.randn(T, B, I, dtype=DT)
    y, h_n, inside = m.forward_with_internals(x)
    act = torch.tanh if nonlinearity == "tanh" else torch.relu
    h, want = x.new_zeros(B, H), []
    for t in range(T):
        h = act(x[t] @ m.weight_ih_l0.t() + m.bias_ih_l0 + h @ m.weight_hh_l0.t() + m.bias_hh_l0)
        want.append(h)
    assert inside.cell_states is None and inside.gates.shape == (1, T, B, 1, H)
    torch.testing.assert_close(inside.gates[0, :, :, 0], torch.stack(want))
    torch.testing.assert_close(inside.gates[0, :, :, 0], y)


CLASSES = {"lstm": rnn_ext.LSTM, "gru": rnn_ext.GRU, "rnn": rnn_ext.RNN}


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_layers_directions_and_layouts(kind):
    cls = CLASSES[kind]
    m = cls(I, H, num_layers=2, bidirectional=True, batch_first=True).double()
    ref = cls(I, H, num_layers=2, bidirectional=True, batch_first=True, backend="reference").double()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(B, T, I, dtype=DT)
    _, state, inside = m.forward_with_internals(x)
    _, _, want = ref.forward_with_internals(x)
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    assert inside.gates.shape == (4, B, T, G, H)
    torch.testing.assert_close(inside.gates, want.gates)
    if kind == "lstm":
        c_n = state[1]
        torch.testing.assert_close(inside.cell_states[0, :, -1], c_n[0])  # forward: last step
        torch.testing.assert_close(inside.cell_states[1, :, 0], c_n[1])   # reverse: first step
    # unbatched input drops the batch dimension
    _, _, one = m.forward_with_internals(x[0])
    torch.testing.assert_close(one.gates, inside.gates[:, 0])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_packed_internals_are_padded_in_input_order(kind):
    cls = CLASSES[kind]
    m = cls(I, H, bidirectional=True).double()
    x = torch.randn(T, B, I, dtype=DT)
    lengths = [3, T, 2]
    _, _, packed = m.forward_with_internals(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False))
    for b, L in enumerate(lengths):
        _, _, alone = m.forward_with_internals(x[:L, b:b + 1])
        torch.testing.assert_close(packed.gates[:, :L, b], alone.gates[:, :, 0])
        assert torch.all(packed.gates[:, L:, b] == 0)


@pytest.mark.parametrize("backend", cpu_backends())
def test_internals_are_differentiable(backend):
    # Interpreted Triton runs a call in about a second: gradcheck's fast
    # mode (a random projection of the Jacobian, one backward per input
    # rather than one per output element) checks the same gradients in a
    # few dozen calls instead of a few hundred.
    fast = backend == "triton"
    m = rnn_ext.LSTM(2, 3, backend=backend).double()
    x = torch.randn(4, 2, 2, dtype=DT, requires_grad=True)

    def f(x):
        _, _, inside = m.forward_with_internals(x)
        return inside.gates, inside.cell_states

    assert torch.autograd.gradcheck(f, (x,), fast_mode=fast)
    g = rnn_ext.GRU(2, 3, backend=backend).double()
    assert torch.autograd.gradcheck(lambda x: g.forward_with_internals(x)[2].gates, (x,), fast_mode=fast)
    r = rnn_ext.RNN(2, 3, backend=backend).double()
    assert torch.autograd.gradcheck(lambda x: r.forward_with_internals(x)[2].gates, (x,), fast_mode=fast)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_chunked_state_passing_equals_one_call(kind, backend):
    cls = CLASSES[kind]
    m = cls(I, H, num_layers=2, backend=backend).double()
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    y_whole, s_whole = m(x)
    outs, state = [], None
    for chunk in x.split([2, 3, 1]):
        y, state = m(chunk, state)
        outs.append(y)
    y_chunks = torch.cat(outs)
    torch.testing.assert_close(y_chunks, y_whole)
    flat = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
    for a, b in zip(flat(state), flat(s_whole)):
        torch.testing.assert_close(a, b)
    w = torch.randn_like(y_whole)
    params = [x] + list(m.parameters())
    g_whole = torch.autograd.grad((y_whole * w).sum(), params)
    g_chunks = torch.autograd.grad((y_chunks * w).sum(), params)
    for a, b in zip(g_chunks, g_whole):
        torch.testing.assert_close(a, b)


def test_truncated_bptt_with_detach():
    m = rnn_ext.LSTM(I, H).double()
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    state, grads = None, []
    for chunk in x.split(3):
        if state is not None:
            state = tuple(s.detach() for s in state)
        y, state = m(chunk, state)
        y.sum().backward()
        grads.append(x.grad.clone())
    # The second chunk's loss does not reach back into the first chunk.
    torch.testing.assert_close(grads[1][:3], grads[0][:3])
    assert torch.all(grads[0][3:] == 0) and torch.any(grads[1][3:] != 0)
