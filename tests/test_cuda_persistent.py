"""The persistent CUDA kernels (csrc/cuda/persistent.cu, the partitioned
loop's CUDA executor), reached with RNN_EXT_CUDA_PERSISTENT=force: the same
numbers as the reference for LSTM, GRU and RNN, projection, sorted and
unsorted lengths, forward and backward, in every dtype, with each worker's
weights in its block's shared memory (the fit rule's sizes) and, forced past
what shared memory holds, read in place; the fp16/bf16 products on
tensor cores (batches of 1 to 17, partial tiles) within twice cuDNN's error;
fp32 with torch.backends.cuda.matmul.allow_tf32 on the tf32 tile within a
tf32 bound, and off at fp32's; and every element written (poisoned
allocations).  Marked `cuda`: none of
this has run on a GPU yet."""
import pytest
import torch

from _poison import poisoned_allocations
from _utils import make_inputs, make_module, outputs_and_grads, run_ops, run_torch, tf32
from rnn_ext import functional
from test_cuda import _errors

pytestmark = pytest.mark.cuda

CASES = [  # T, B, H, P, lengths
    (7, 3, 37, 0, None),
    (7, 3, 37, 11, None),
    (6, 5, 64, 0, [6, 5, 5, 2, 0]),
    (6, 5, 300, 40, [2, 6, 0, 3, 6]),
]


@pytest.fixture
def persistent(monkeypatch):
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", "force")


def _run(kind, case, dtype, backend):
    T, B, H, P, lengths = case
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to("cuda", dtype).requires_grad_()

    L = torch.tensor(lengths) if lengths else None
    if kind == "lstm":
        hout = P or H
        inputs = [r(T, B, 4 * H), r(4 * H, hout, scale=0.2), r(4 * H), r(P, H, scale=0.2) if P else None,
                  r(B, hout), r(B, H)]
        outs = functional.lstm(*inputs, lengths=L, backend=backend)
    elif kind == "rnn":
        inputs = [r(T, B, H), r(H, H, scale=0.2), r(H), r(B, H)]
        outs = functional.rnn(*inputs, lengths=L, backend=backend)
    else:
        inputs = [r(T, B, 3 * H), r(3 * H, H, scale=0.2), r(3 * H), r(B, H)]
        outs = functional.gru(*inputs, lengths=L, backend=backend)
    return outputs_and_grads(outs, [t for t in inputs if t is not None])


TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("case", CASES, ids=["h37", "h37-proj", "h64-sorted", "h300-proj-unsorted"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_persistent_matches_reference(kind, case, dtype, persistent):
    if kind != "lstm" and case[3]:
        pytest.skip("projection is LSTM only")
    torch.backends.cuda.matmul.allow_tf32 = False
    got_o, got_g = _run(kind, case, dtype, "cuda")
    want_o, want_g = _run(kind, case, torch.float64, "reference")
    for got, want in zip(got_o + got_g, want_o + want_g):
        scale = max(1.0, want.abs().max().item())
        assert (got.double() - want).abs().max().item() <= TOL[dtype] * scale


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_persistent_writes_every_element(kind, persistent):
    case = CASES[3] if kind == "lstm" else CASES[2]
    clean = _run(kind, case, torch.float64, "cuda")
    with poisoned_allocations():
        poisoned = _run(kind, case, torch.float64, "cuda")
    for a, b in zip(clean[0] + clean[1], poisoned[0] + poisoned[1]):
        assert torch.equal(a, b)


def _kernel_names(fn):
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}


@pytest.mark.parametrize("mode,B,H,expect", [
    ("1", 4, 64, True),       # fits: the fit rule (rnn_ext/fit.h) picks the persistent kernel
    ("1", 200, 64, False),    # batch above 128: stepwise
    ("0", 4, 64, False),      # off: stepwise
    ("force", 200, 64, True),  # forced: persistent whatever the rule says
])
def test_fit_rule_routes_between_persistent_and_stepwise(monkeypatch, mode, B, H, expect):
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", mode)
    case = (4, B, H, 0, None)
    names = _kernel_names(lambda: _run("lstm", case, torch.float32, "cuda"))
    used = any("lstm_forward_kernel" in n for n in names)
    assert used == expect, sorted(names)
    got_o, got_g = _run("lstm", case, torch.float32, "cuda")
    want_o, want_g = _run("lstm", case, torch.float64, "reference")
    for got, want in zip(got_o + got_g, want_o + want_g):
        assert (got.double() - want).abs().max().item() <= TOL[torch.float32] * max(1.0, want.abs().max().item())


# The fp16/bf16 forward products run on tensor cores (csrc/cuda/mma_tile.cuh:
# 16 weight rows by 8 batch rows per mma.sync, K in chunks of 16): batches of
# one tile column (1, 8), of two and three (9, 17), hidden sizes and input
# depths that leave partial row and K tiles (37, 100), tiles spanning two
# gates, and sorted lengths (fewer active rows per step).  The forward
# kernels hold W_hh's fragments in registers across steps where a worker's
# row tiles have a warp each and a warp's share of K fits the kernel's
# budget, K split across the warps of a row tile (mma_layout.h's KSplit:
# here 2 to 8 warps a row tile, their partials reduced through shared
# memory); H = 300 (CASES) takes the shared-memory fallback where it does
# not fit.
MMA_CASES = [  # T, B, I, H, lengths
    (5, 1, 7, 37, None),
    (5, 8, 7, 48, None),
    (4, 9, 5, 37, [4, 4, 3, 3, 3, 2, 2, 1, 1]),
    (4, 17, 5, 100, None),
]
LOW = (torch.float16, torch.bfloat16)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("case", MMA_CASES, ids=["b1-h37", "b8-h48", "b9-h37-lengths", "b17-h100"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_persistent_tensor_core_products_within_twice_cudnn_error(kind, case, dtype, persistent):
    """Outputs and gradients (forward and backward products on tensor cores)
    within twice cuDNN's error at the same dtype against fp64 (plus a floor),
    on the persistent kernels (checked by name)."""
    T, B, I, H, lengths = case
    module = make_module(kind, I, H, 0, True, torch.float64, "cuda")
    x, h0, c0 = make_inputs(kind, module, T, B, torch.float64, "cuda")
    L = torch.tensor(lengths) if lengths else None
    cell = "rnn" if kind.startswith("rnn") else kind
    low = make_module(kind, I, H, 0, True, dtype, "cuda")
    low.load_state_dict(module.state_dict())
    args = [t.detach().to(dtype) if t is not None else None for t in (x, h0, c0)]
    names = _kernel_names(lambda: run_ops(kind, low, *args, L, backend="cuda"))
    assert any(f"{cell}_forward_kernel" in n for n in names), sorted(names)
    ours, _ = _errors(kind, module, x, h0, c0, L, lambda *a: run_ops(*a, backend="cuda"), dtype)
    cudnn, _ = _errors(kind, module, x, h0, c0, L, run_torch, dtype)
    for k, (e, c) in enumerate(zip(ours, cudnn)):
        assert e <= 2 * c + 2e-3, f"result {k}: error {e:.3g} vs cuDNN's {c:.3g}"


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_persistent_tensor_core_products_write_every_element(kind, dtype, persistent):
    """The tile stores cover every gate column of every active row: with
    poisoned allocations (the gate scratch starts as NaN) the results are
    those of a clean run, bit for bit."""
    case = (6, 11, 37, 0, [6, 6, 5, 5, 4, 4, 3, 3, 2, 1, 1])
    clean = _run(kind, case, dtype, "cuda")
    with poisoned_allocations():
        poisoned = _run(kind, case, dtype, "cuda")
    for a, b in zip(clean[0] + clean[1], poisoned[0] + poisoned[1]):
        assert torch.equal(a, b)


def _check_against_reference(kind, case, dtype):
    got_o, got_g = _run(kind, case, dtype, "cuda")
    want_o, want_g = _run(kind, case, torch.float64, "reference")
    for got, want in zip(got_o + got_g, want_o + want_g):
        scale = max(1.0, want.abs().max().item())
        assert (got.double() - want).abs().max().item() <= TOL[dtype] * scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("kind,case", [
    ("lstm", (5, 16, 1024, 0, None)),        # 128 workers, 64 KiB (bf16) / 128 KiB (fp32) each
    ("gru", (5, 4, 768, 0, [5, 5, 3, 1])),   # sorted lengths
    ("lstm", (4, 8, 512, 128, [1, 4, 4, 2, 0, 3, 4, 1])),  # projection: the two directions' blocks differ
    ("rnn", (6, 1, 1536, 0, None)),
])
def test_persistent_shared_memory_sizes(monkeypatch, kind, case, dtype):
    """Sizes the fit rule admits with the weights in shared memory, up to
    the issue's H = 1024 (fp32 LSTM there: 128 KiB per block, one block per
    SM), through RNN_EXT_CUDA_PERSISTENT=1 (so the rule's worker count and
    shared-memory size are the ones launched)."""
    monkeypatch.setenv("RNN_EXT_CUDA_PERSISTENT", "1")
    torch.backends.cuda.matmul.allow_tf32 = False
    names = _kernel_names(lambda: _run(kind, case, dtype, "cuda"))
    assert any(f"{kind}_forward_kernel" in n for n in names), sorted(names)
    assert any(f"{kind}_backward_kernel" in n for n in names), sorted(names)
    _check_against_reference(kind, case, dtype)


def test_persistent_forced_past_shared_memory(persistent):
    """An fp64 LSTM at H = 1024 (32 MiB of W_hh) does not fit the chip's
    shared memory: forced, the launch gives the blocks none and the workers
    read their weights in place, with the same numbers."""
    _check_against_reference("lstm", (3, 2, 1024, 0, None), torch.float64)


# fp32 with allow_tf32: every per-step product (forward and backward) on the
# tf32 tile (csrc/cuda/mma_tile.cuh: mma.sync m16n8k8 .tf32, each operand
# rounded to tf32 by cvt.rna, 2^-11 relative, fp16's unit roundoff; fp32
# accumulation), so fp16's tolerance; with it off the same kernel runs FFMA
# at fp32's.  The results must also move with the switch (the flag reaches
# the kernel): FFMA's are deterministic, so the difference is tf32's.
TF32_TOL = TOL[torch.float16]
TF32_CASES = [  # T, B, H, P, lengths: partial row, K and batch tiles, two batch tiles
    (7, 3, 37, 0, None),
    (6, 5, 300, 40, [2, 6, 0, 3, 6]),
    (4, 17, 100, 0, None),
]


@pytest.mark.parametrize("case", TF32_CASES, ids=["h37", "h300-proj-unsorted", "b17-h100"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_persistent_fp32_follows_allow_tf32(kind, case, persistent):
    if kind != "lstm" and case[3]:
        pytest.skip("projection is LSTM only")
    want = _run(kind, case, torch.float64, "reference")
    with tf32(True):
        names = _kernel_names(lambda: _run(kind, case, torch.float32, "cuda"))
        on = _run(kind, case, torch.float32, "cuda")
    assert any(f"{kind}_forward_kernel" in n for n in names), sorted(names)
    assert any(f"{kind}_backward_kernel" in n for n in names), sorted(names)
    assert not torch.backends.cuda.matmul.allow_tf32  # conftest's setting, restored
    off = _run(kind, case, torch.float32, "cuda")
    moved = 0.0
    for got_on, got_off, w in zip(on[0] + on[1], off[0] + off[1], want[0] + want[1]):
        scale = max(1.0, w.abs().max().item())
        assert (got_on.double() - w).abs().max().item() <= TF32_TOL * scale
        assert (got_off.double() - w).abs().max().item() <= TOL[torch.float32] * scale
        moved = max(moved, (got_on - got_off).abs().max().item() / scale)
    assert moved > 1e-5, "allow_tf32 did not change the fp32 results: the tf32 tile did not run"


def test_persistent_tf32_writes_every_element(persistent):
    """The tf32 tile's stores cover every gate column of every active row
    (batch rows 9..11: a second, partial batch tile): poisoned allocations
    give the clean run's results bit for bit."""
    case = (6, 11, 37, 0, [6, 6, 5, 5, 4, 4, 3, 3, 2, 1, 1])
    with tf32(True):
        clean = _run("lstm", case, torch.float32, "cuda")
        with poisoned_allocations():
            poisoned = _run("lstm", case, torch.float32, "cuda")
    for a, b in zip(clean[0] + clean[1], poisoned[0] + poisoned[1]):
        assert torch.equal(a, b)
