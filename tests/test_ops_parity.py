"""The sequence ops against nn.LSTM / nn.GRU / nn.RNN with the same weights: outputs,
final states and every gradient (input, h0, c0, all weights and biases), on
every backend that runs on the CPU."""
import pytest
import torch

from _utils import (KINDS, assert_all_close, cpu_backends, make_inputs, make_module,
                    outputs_and_grads, run_ops, run_torch)

# (T, B, input_size, hidden_size, proj_size, bias, lengths)
CASES = [
    (1, 1, 3, 5, 0, True, None),            # T = 1, B = 1
    (7, 3, 5, 11, 0, True, None),           # odd sizes, I != H
    (6, 4, 9, 7, 0, False, None),           # no bias
    (5, 3, 4, 8, 3, True, None),            # projection
    (6, 4, 3, 5, 0, True, [6, 4, 4, 1]),    # sorted lengths
    (6, 4, 3, 5, 0, True, [2, 6, 1, 5]),    # unsorted lengths
    (5, 3, 4, 6, 2, True, [3, 5, 1]),       # projection and lengths
    (4, 5, 2, 3, 0, True, [2, 2, 2, 2, 2]),  # every sequence ends early
]


def _ids(case):
    T, B, I, H, P, bias, lengths = case
    return f"T{T}-B{B}-I{I}-H{H}-P{P}-{'bias' if bias else 'nobias'}-{'len' if lengths else 'full'}"


# nn.GRU and nn.RNN have no projection: they run the cases without one.
KIND_CASES = [pytest.param(kind, case, id=f"{kind}-{_ids(case)}")
              for kind in KINDS for case in CASES if kind == "lstm" or not case[4]]


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind,case", KIND_CASES)
def test_matches_torch_nn(kind, case, dtype, backend):
    T, B, I, H, P, bias, lengths = case
    module = make_module(kind, I, H, P, bias, dtype)
    x, h0, c0 = make_inputs(kind, module, T, B, dtype)
    lengths = torch.tensor(lengths) if lengths else None
    wrt = [x, h0] + ([c0] if c0 is not None else []) + list(module.parameters())
    names = ["x", "h0"] + (["c0"] if c0 is not None else []) + [n for n, _ in module.named_parameters()]

    want_out, want_grads = outputs_and_grads(run_torch(kind, module, x, h0, c0, lengths), wrt)
    got_out, got_grads = outputs_and_grads(run_ops(kind, module, x, h0, c0, lengths, backend), wrt)
    assert_all_close(got_out, want_out, dtype, ["output", "h_n", "c_n"])
    assert_all_close(got_grads, want_grads, dtype, ["grad " + n for n in names])


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("kind", KINDS)
def test_outputs_past_the_end_are_zero_and_state_is_kept(kind, backend):
    module = make_module(kind, 3, 4)
    x, h0, c0 = make_inputs(kind, module, 6, 3, torch.float64)
    lengths = torch.tensor([6, 2, 0])
    y, hn, cn = run_ops(kind, module, x, h0, c0, lengths, backend)
    assert torch.all(y[2:, 1] == 0) and torch.all(y[:, 2] == 0)
    torch.testing.assert_close(hn[1], y[1, 1])
    torch.testing.assert_close(hn[2], h0[2])  # length 0 keeps h0
    if kind == "lstm":
        torch.testing.assert_close(cn[2], c0[2])
