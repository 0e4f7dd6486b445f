"""The stepwise loop (csrc/ops/sequence.h): the CUDA backend's default loop,
a GEMM on raw pointers (cuBLASLt on CUDA) and a pointwise kernel per step.

The same loop runs on the CPU with the CPU's GEMM and step loops
(rnn_ext._C._set_cpu_stepwise), so its pointer arithmetic, lengths,
projection and dtypes are tested here without a GPU; the tests marked `cuda`
count the kernels per step on a GPU."""

import pytest
import torch

from _poison import poisoned_allocations
from test_partition import CASES, IDS, _allocated_bytes, _function, _inputs, _run, cpu_stepwise

KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def _kind_cases():
    return [pytest.param(k, c, id=f"{k}-{i}") for k in KINDS for c, i in zip(CASES, IDS)
            if k == "lstm" or not c[3]]


@pytest.mark.parametrize("kind,case", _kind_cases())
def test_stepwise_loop_matches_reference(kind, case):
    inputs, L = _inputs(kind, case)
    want_out, want_grads = _run(kind, inputs, L, "reference")
    with cpu_stepwise():
        out, grads = _run(kind, inputs, L, "cpu")
    for got, want in zip(out + grads, want_out + want_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_stepwise_loop_in_every_dtype(kind, dtype):
    """Each dtype against fp64: within twice the error of the partitioned
    loop at that dtype (both carry the recurrent product, the cell state and
    dh in fp32; the 16-bit LSTM projection writes its 16-bit output directly)."""
    case = (6, 5, 13, 5 if kind == "lstm" else 0, [6, 5, 3, 3, 0])
    exact_in, L = _inputs(kind, case)
    exact = _run(kind, exact_in, L, "reference")
    inputs, _ = _inputs(kind, case, dtype=dtype)
    partitioned = _run(kind, inputs, L, "cpu")
    with cpu_stepwise():
        stepwise = _run(kind, inputs, L, "cpu")
    assert stepwise[0][0].dtype == dtype
    for s, p, e in zip(stepwise[0] + stepwise[1], partitioned[0] + partitioned[1],
                       exact[0] + exact[1]):
        err_s = (s.double() - e).abs().max().item()
        err_p = (p.double() - e).abs().max().item()
        scale = e.abs().max().item()
        assert err_s <= 2 * err_p + 1e-6 * scale, (err_s, err_p, scale)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
@pytest.mark.parametrize("lengths", [[2, 5, 0, 4], [5, 4, 2, 0]], ids=["unsorted", "sorted"])
def test_stepwise_poisoned_buffers_every_element_written(kind, lengths):
    """NaN-filled allocations: every output, state and gradient element is
    written, also where sorted lengths shrink the GEMMs and where a finished
    row's projected output must be zero."""
    case = (5, 4, 9, 4 if kind == "lstm" else 0, lengths)
    inputs, L = _inputs(kind, case)
    with cpu_stepwise():
        clean = _run(kind, inputs, L, "cpu")
        with poisoned_allocations():
            poisoned = _run(kind, inputs, L, "cpu")
    for a, b in zip(clean[0] + clean[1], poisoned[0] + poisoned[1]):
        assert torch.equal(a, b)


def _aten_ops(fn):
    """How many ATen ops (and ops of any library) ran while fn ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if "::" in e.name and not e.name.startswith("rnn_ext::"))


@pytest.mark.parametrize("kind", KINDS + ["lstm-proj"])
@pytest.mark.parametrize("lengths", [False, True], ids=["padded", "lengths"])
def test_stepwise_loop_calls_no_aten_op_per_step(kind, lengths):
    """The number of ATen calls of a forward and backward does not grow with
    the sequence length: inside the time loop there are none (only the GEMM
    and the step kernel, on raw pointers)."""
    proj = kind == "lstm-proj"
    kind = "lstm" if proj else kind

    def calls(T):
        case = (T, 3, 6, 3 if proj else 0, [T, T - 1, 2] if lengths else None)
        inputs, L = _inputs(kind, case)
        return _aten_ops(lambda: _run(kind, inputs, L, "cpu"))

    with cpu_stepwise():
        assert calls(4) == calls(12)


def test_stepwise_switch_routes_the_cpu_ops():
    """The switch really selects the stepwise loop: it keeps the workspace of
    every step even for inference, which the partitioned loop does not."""
    T, B, H = 64, 4, 16
    inputs, _ = _inputs("lstm", (T, B, H, 0, None), dtype=torch.float32, grad=False)
    fn = _function("lstm")
    workspace = T * B * 5 * H * 4
    partitioned = _allocated_bytes(lambda: fn(*inputs, backend="cpu", need_workspace=False))
    with cpu_stepwise():
        stepwise = _allocated_bytes(lambda: fn(*inputs, backend="cpu", need_workspace=False))
    assert partitioned < workspace <= stepwise, (partitioned, workspace, stepwise)


# --------------------------------------------------------------- GPU ----

def _cuda_kernels(fn):
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64],
                         ids=["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("kind", KINDS + ["lstm-proj"])
@pytest.mark.parametrize("lengths", [False, True], ids=["padded", "lengths"])
def test_cuda_stepwise_kernels_per_step(kind, dtype, lengths, monkeypatch):
    """Per step, forward and backward each launch two kernels (the cuBLASLt
    product, with split-K excluded, and the pointwise step); with proj_size
    forward launches three and backward four.  Counted as the difference
    between two sequence lengths, so the work before and after the loop
    cancels."""
    monkeypatch.delenv("RNN_EXT_CUDA_PERSISTENT", raising=False)
    proj = kind == "lstm-proj"
    kind = "lstm" if proj else kind
    B = 4

    def kernels(T):
        case = (T, B, 32, 16 if proj else 0, [T, T, T - 1, 2] if lengths else None)
        inputs, L = _inputs(kind, case, dtype=dtype)
        inputs = [t.detach().cuda().requires_grad_() if t is not None else None for t in inputs]
        fn = _function(kind)
        # Warm-up: the first call plans the GEMMs and loads the kernels.
        _run(kind, inputs, L, "cuda")
        out = {}
        out["forward"] = _cuda_kernels(lambda: fn(*inputs, lengths=L, backend="cuda"))
        total = _cuda_kernels(lambda: _run(kind, inputs, L, "cuda"))
        out["backward"] = total - out["forward"]
        return out

    short, long_ = kernels(8), kernels(24)
    per_step = {k: (long_[k] - short[k]) / 16 for k in short}
    assert per_step["forward"] <= (3 if proj else 2), per_step
    assert per_step["backward"] <= (4 if proj else 2), per_step
