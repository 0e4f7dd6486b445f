"""The CUDA kernels compile for sm_90 (H100) within the resources their
launches need, checked on any machine with nvcc, GPU or not: no register
spills, no local-memory stack, and registers x threads of the persistent
kernels within one SM's register file (a cooperative launch needs every
block resident).  And the fit rule (csrc/include/rnn_ext/fit.h) on an
H100's limits with the persistent kernels' sm_90 registers and static
shared memory: the issue's target shapes go persistent with every worker's
weights in its block's shared memory (227 KiB a block, less the static) and
every block co-resident at that size; what cannot fit goes stepwise."""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
REGISTERS_PER_SM = 65536
PERSISTENT_THREADS = 256  # kPersistentThreads in csrc/cuda/persistent.h

# One xdist worker compiles each source once (the session-scoped reports).
pytestmark = [pytest.mark.skipif(NVCC is None, reason="needs nvcc"), pytest.mark.xdist_group("cuda_sm90")]


def _compile_sm90(source, tmp_path):
    """One nvcc compile of `source` for sm_90: ptxas's report of each kernel,
    and the PTX that nvcc kept (-keep) on the way."""
    cmd = [NVCC, "-std=c++17", "-O3", "-arch=sm_90", f"-I{ROOT}/csrc", f"-I{ROOT}/csrc/include",
           "-Xptxas", "-v", "-keep", "-keep-dir", str(tmp_path), "-c", os.path.join(ROOT, source),
           "-o", str(tmp_path / "k.o")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    kernels, current = {}, None
    for line in out.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for 'sm_90'", line)
        if m:
            current = m.group(1)
            kernels[current] = {}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            kernels[current].update(stack=int(m.group(1)), spill=int(m.group(2)) + int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            kernels[current]["registers"] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m:
            kernels[current]["shared"] = int(m.group(1))
    stem = os.path.splitext(os.path.basename(source))[0]
    return kernels, (tmp_path / f"{stem}.ptx").read_text()


@pytest.fixture(scope="session")
def sm90(tmp_path_factory):
    """Each source compiled for sm_90 once for the session: (ptxas's
    report, PTX)."""
    cache = {}

    def compiled(source):
        if source not in cache:
            cache[source] = _compile_sm90(source, tmp_path_factory.mktemp("nvcc"))
        return cache[source]
    return compiled


@pytest.fixture(scope="session")
def reports(sm90):
    """ptxas's report of each source: {kernel: registers, shared, stack, spill}."""
    return lambda source: sm90(source)[0]


@pytest.mark.parametrize("source", ["csrc/cuda/persistent.cu", "csrc/cuda/rnn_cuda.cu"])
def test_kernels_fit_sm90(source, reports):
    kernels = reports(source)
    assert kernels, "ptxas reported no kernel"
    for name, r in kernels.items():
        assert r.get("spill", 0) == 0, f"{name} spills registers: {r}"
        assert r.get("stack", 0) == 0, f"{name} uses a local-memory stack: {r}"
        if "persistent" in source:
            assert r["registers"] * PERSISTENT_THREADS <= REGISTERS_PER_SM, f"{name}: {r}"
    if "persistent" in source:  # forward and backward, LSTM, GRU and RNN, four dtypes,
        # and fp32's second variant (the tf32 tile)
        assert len(kernels) == 30, sorted(kernels)


def _ptx_entries(source, arch, tmp_path, sm90):
    """The PTX of each kernel in `source` compiled for `arch`, by mangled
    name (sm_90's from the session's compile)."""
    if arch == "sm_90":
        text = sm90(source)[1]
    else:
        out = tmp_path / f"k_{arch}.ptx"
        subprocess.run([NVCC, "-std=c++17", "-O3", f"-arch={arch}", f"-I{ROOT}/csrc",
                        f"-I{ROOT}/csrc/include", "-ptx", os.path.join(ROOT, source), "-o", str(out)],
                       capture_output=True, text=True, check=True)
        text = out.read_text()
    entries = {}
    for chunk in text.split(".entry ")[1:]:
        name = chunk.split("(", 1)[0].strip()
        entries[name] = chunk
    return entries


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_persistent_products_use_tensor_cores(arch, tmp_path, sm90):
    """The per-step products of the fp16 and bf16 persistent kernels,
    forward and backward, are the tensor-core tile (csrc/cuda/mma_tile.cuh:
    mma.sync m16n8k16 with fp32 accumulators, in the storage type's form).
    fp32 has two variants of each kernel: the tf32 tile's (mma.sync m16n8k8
    .tf32 on operands rounded by cvt.rna.tf32.f32), which a call with
    allow_tf32 on launches, and FFMA in fp32 with no MMA; fp64 has FFMA
    only, no MMA and no tf32 conversion.  No kernel keeps anything in local
    memory (the forward kernels' register-resident fragments included).
    (Which instructions are compiled, not that they are right: ctest
    mma_layout runs the tiles' index logic on the CPU.)"""
    entries = _ptx_entries("csrc/cuda/persistent.cu", arch, tmp_path, sm90)
    assert len(entries) == 30, sorted(entries)
    mma = {"__half": "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
           "__nv_bfloat16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"}
    tf32_mma = "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"
    seen = {"tf32": 0, "f": 0, "d": 0}
    for name, ptx in entries.items():
        # Nothing in local memory: the forward kernels' W_hh fragments
        # held across steps (mma_tile.cuh's ResidentA) stay in registers.
        assert "__local_depot" not in ptx, name
        type_name = next((t for t in mma if f"I{len(t)}{t}fLb0E" in name), None)
        if type_name:
            assert ptx.count("mma.sync") == ptx.count(mma[type_name]) >= 1, name
            assert "tf32" not in ptx, name
        elif "IffLb1E" in name:  # fp32, allow_tf32: the tf32 tile
            seen["tf32"] += 1
            assert ptx.count("mma.sync") == ptx.count(tf32_mma) >= 1, name
            assert "cvt.rna.tf32.f32" in ptx, name
        elif "IffLb0E" in name:  # fp32 without: FFMA
            seen["f"] += 1
            assert "mma.sync" not in ptx and "tf32" not in ptx, name
            assert "fma.rn.f32" in ptx, name
        else:  # fp64: FFMA only
            assert "IddLb0E" in name, name
            seen["d"] += 1
            assert "mma.sync" not in ptx and "tf32" not in ptx, name
            assert "fma.rn.f64" in ptx, name
    assert seen == {"tf32": 6, "f": 6, "d": 6}, seen


# An H100 SXM (cudaDeviceProp): SMs, registers, shared memory, blocks and
# threads per SM, and the shared memory one block may opt in to.
H100 = dict(sms=132, registers_per_sm=65536, shared_per_sm=233472, max_blocks_per_sm=32,
            max_threads_per_sm=2048, shared_per_block=232448)
RESERVED_SHARED_PER_BLOCK = 1024  # the runtime's, per block (sm_80+)
DTYPE_NAMES = {"__half": 2, "__nv_bfloat16": 2, "f": 4, "d": 8}  # in the mangled names


def _fit(H, Hin, G, B, dtype_bytes, registers, shared=0, backward=False, directions=1):
    from rnn_ext import _C
    d = H100
    return _C._persistent_fit(H, Hin, G, B, dtype_bytes, d["sms"], d["registers_per_sm"],
                              d["shared_per_sm"], d["max_blocks_per_sm"], d["max_threads_per_sm"],
                              d["shared_per_block"], registers, PERSISTENT_THREADS, shared, backward,
                              directions)


def _largest_slice(n, K, align):
    from rnn_ext import _C
    return max(e - b for b, e in _C._partition_slices(n, K, align)) if n else 0


def _weight_bytes(H, P, G, K, dtype_bytes, backward):
    """A worker's shared-memory copy of its weights (csrc/cuda/resident.h),
    recomputed here from the partition's own slices: forward [Hin, G*|u|]
    (+ [H, |pc|] of W_hr), backward [G*H, |d|] (+ [P, |u|] of W_hr), each
    region rounded up to 16 bytes."""
    align = 8 if H >= 32 * K else 1
    u, pc = _largest_slice(H, K, align), _largest_slice(P, K, align)
    Hin = P or H
    regions = [G * H * (pc if P else u), P * u] if backward else [Hin * G * u, H * pc]
    return sum(-(-r * dtype_bytes // 16) * 16 for r in regions)


def _persistent_kernels(reports, cell, direction, type_name, tf32=False):
    """ptxas's report of one kernel: `tf32` selects fp32's tf32 variant
    (template argument kTf32; every other kernel is the false one)."""
    kernels = reports("csrc/cuda/persistent.cu")
    variant = f"[fd]Lb{int(tf32)}E"
    found = [r for name, r in kernels.items()
             if f"{cell}_{direction}_kernel" in name
             and re.search(rf"I(?:{len(type_name)}{type_name}|{type_name}){variant}", name)]
    return found


@pytest.mark.parametrize("cell,G", [("lstm", 4), ("gru", 3), ("rnn", 1)])
@pytest.mark.parametrize("type_name", ["__nv_bfloat16", "__half"])
def test_fit_rule_with_sm90_registers(reports, cell, G, type_name):
    """The persistent kernels as compiled for sm_90, on an H100: the issue's
    target shapes (B in 1, 4, 16; H in 256..1024; 16-bit) fit, each worker's
    W_hh slice in its block's shared memory (with the kernel's static shared
    memory within 227 KiB) and every block co-resident at that size (the
    registers x threads and shared memory of blocks_per_sm blocks within one
    SM's); a W_hh too large for the chip, or a batch above 128, goes
    stepwise."""
    for direction in ("forward", "backward"):
        [r] = _persistent_kernels(reports, cell, direction, type_name)
        static = r.get("shared", 0)
        for H in (256, 512, 768, 1024):
            for B in (1, 4, 16):
                d = _fit(H, H, G, B, 2, r["registers"], static, direction == "backward")
                assert d["persistent"], (cell, direction, H, B, r, d)
                assert d["reason"] == "fits"
                K, per_sm = d["workers"], d["blocks_per_sm"]
                assert 1 <= K <= min(H, per_sm * H100["sms"])
                weights = d["weight_bytes_per_worker"]
                assert weights == _weight_bytes(H, 0, G, K, 2, direction == "backward")
                assert static + weights <= H100["shared_per_block"]
                assert per_sm * (static + weights + RESERVED_SHARED_PER_BLOCK) <= H100["shared_per_sm"]
                assert per_sm * r["registers"] * PERSISTENT_THREADS <= REGISTERS_PER_SM
                assert weights <= d["chip_bytes_per_worker"]
        too_big = _fit(8192, 8192, G, 16, 8, r["registers"], static, direction == "backward")
        assert not too_big["persistent"] and too_big["reason"] == "weights_exceed_chip"
        wide = _fit(256, 256, G, 256, 2, r["registers"], static, direction == "backward")
        assert not wide["persistent"] and wide["reason"] == "batch_too_large"


@pytest.mark.parametrize("cell,G", [("lstm", 4), ("gru", 3), ("rnn", 1)])
@pytest.mark.parametrize("tf32", [False, True], ids=["ffma", "tf32"])
def test_fit_rule_fp32_kernel_variants(reports, cell, G, tf32):
    """fp32's two variants (the tf32 tile's, FFMA's) have their own sm_90
    registers, which the fit rule reads for the one a call runs
    (persistent_resources' tf32), and the same fp32 copy of the weights: at
    the issue's sizes each fits an H100 with the fp32 shared-memory bytes,
    the registers of the blocks per SM within the register file.  The FFMA
    variant (allow_tf32 is off by default) pays nothing for the tf32 path:
    its kernels stay under 128 registers, two blocks per SM where the
    shared memory allows."""
    for direction in ("forward", "backward"):
        [r] = _persistent_kernels(reports, cell, direction, "f", tf32)
        if not tf32:
            assert r["registers"] <= 128, (cell, direction, r)
        static = r.get("shared", 0)
        for H in (256, 1024):
            for B in (1, 16):
                d = _fit(H, H, G, B, 4, r["registers"], static, direction == "backward")
                assert d["persistent"], (cell, direction, H, B, r, d)
                per_sm, weights = d["blocks_per_sm"], d["weight_bytes_per_worker"]
                assert weights == _weight_bytes(H, 0, G, d["workers"], 4, direction == "backward")
                assert per_sm * r["registers"] * PERSISTENT_THREADS <= REGISTERS_PER_SM
                assert per_sm * (static + weights + RESERVED_SHARED_PER_BLOCK) <= H100["shared_per_sm"]


@pytest.mark.parametrize("backward", [False, True])
def test_fit_rule_projection_shared_bytes(reports, backward):
    """LSTM with a projection on an H100 with the sm_90 kernels: the forward
    holds W_hh's rows and W_hr's, the backward their columns, and the rule's
    bytes are those of the partition's largest slices."""
    [r] = _persistent_kernels(reports, "lstm", "backward" if backward else "forward", "__nv_bfloat16")
    for H, P in ((300, 40), (1024, 256), (768, 512)):
        d = _fit(H, P, 4, 8, 2, r["registers"], r.get("shared", 0), backward)
        assert d["persistent"], (H, P, d)
        assert d["weight_bytes_per_worker"] == _weight_bytes(H, P, 4, d["workers"], 2, backward)


@pytest.mark.parametrize("cell,G", [("lstm", 4), ("gru", 3), ("rnn", 1)])
def test_fit_rule_both_directions_in_one_launch(reports, cell, G):
    """Both directions of a bidirectional layer in one cooperative launch
    (the kernels' second sequence): on an H100 with the sm_90 kernels, bf16
    at the issue's sizes up to H = 1024 fits with 2K blocks co-resident, each
    with its worker's weights in shared memory; fp32 LSTM at H = 1024 (2 x 16
    MiB) does not fit the chip."""
    for direction in ("forward", "backward"):
        [r] = _persistent_kernels(reports, cell, direction, "__nv_bfloat16")
        static = r.get("shared", 0)
        for H in (256, 512, 768, 1024):
            d = _fit(H, H, G, 16, 2, r["registers"], static, direction == "backward", 2)
            assert d["persistent"], (cell, direction, H, d)
            K, per_sm, weights = d["workers"], d["blocks_per_sm"], d["weight_bytes_per_worker"]
            assert 2 * K <= per_sm * H100["sms"]
            assert per_sm * (static + weights + RESERVED_SHARED_PER_BLOCK) <= H100["shared_per_sm"]
            assert per_sm * r["registers"] * PERSISTENT_THREADS <= REGISTERS_PER_SM
            assert weights == _weight_bytes(H, 0, G, K, 2, direction == "backward")
    [r] = _persistent_kernels(reports, "lstm", "forward", "f")
    assert _fit(1024, 1024, 4, 16, 4, r["registers"], r.get("shared", 0))["persistent"]
    pair = _fit(1024, 1024, 4, 16, 4, r["registers"], r.get("shared", 0), False, 2)
    assert not pair["persistent"] and pair["reason"] == "weights_exceed_chip"


def test_fit_rule_needs_more_workers_where_slices_exceed_a_block():
    """fp32 LSTM at H=1280 (25 MiB of W_hh): 160 workers of 8 units would
    need 160 KiB each, one block per SM, so only 132 co-resident: the rule
    takes more workers, the fewest with which two blocks fit an SM, and
    refuses where no count fits (fp64 at H=1024, 32 MiB)."""
    d = _fit(1280, 1280, 4, 16, 4, 64)
    assert d["persistent"] and 160 < d["workers"] <= 2 * H100["sms"] and d["blocks_per_sm"] == 2
    fewer = d["workers"] - 1
    w = _weight_bytes(1280, 0, 4, fewer, 4, False)
    blocks = min(4, H100["shared_per_sm"] // (w + RESERVED_SHARED_PER_BLOCK))
    assert blocks * H100["sms"] < fewer, "a smaller worker count would have fitted"
    refused = _fit(1024, 1024, 4, 16, 8, 64)
    assert not refused["persistent"] and refused["reason"] == "weights_exceed_chip"


def test_fit_rule_register_granule_and_refusals():
    """Residency follows the register granule (a warp's registers are
    allocated in 256s) and a kernel that cannot be resident is refused."""
    assert _fit(256, 256, 4, 16, 2, 64)["blocks_per_sm"] == 4
    assert _fit(256, 256, 4, 16, 2, 65)["blocks_per_sm"] == 3
    refused = _fit(256, 256, 4, 16, 2, 32, shared=240 * 1024)
    assert not refused["persistent"] and refused["reason"] == "not_resident"


def _register_budget(name):
    """A forward kernel's register budget in chunks of K (csrc/cuda/persistent.cu)."""
    with open(os.path.join(ROOT, "csrc/cuda/persistent.cu")) as f:
        return int(re.search(rf"constexpr int {name} = (\d+);", f.read()).group(1))


def _k_split(rows, depth, k_per_chunk, warps=PERSISTENT_THREADS // 32):
    """mma::k_split (csrc/include/rnn_ext/mma_layout.h; ctest mma_layout
    runs it): floor(warps / row tiles) warps a row tile, ceil(chunks / that)
    chunks each.  Returns (row tiles, chunks per warp); None where there are
    more row tiles than warps."""
    row_tiles, chunks = -(-rows // 16), -(-depth // k_per_chunk)
    if row_tiles > warps:
        return None
    return row_tiles, -(-chunks // (warps // row_tiles))


@pytest.mark.parametrize("cell,G,budget,largest", [("lstm", 4, "kLstmRegisterChunks", 768),
                                                   ("gru", 3, "kGruRegisterChunks", 256),
                                                   ("rnn", 1, "kRnnRegisterChunks", 512)])
def test_target_shapes_hold_weights_in_registers(reports, cell, G, budget, largest):
    """The forward kernels on an H100 with their sm_90 registers, at the
    issue's target sizes (bf16, H 256..1024, one direction): the workers'
    W_hh rows, split over the block's warps, fit the kernel's register
    budget up to H = `largest` (LSTM 768, GRU 256, RNN 512: the table in
    benchmarks/NOTES.md) and take the shared-memory path above it.
    Arithmetic on the fit rule's worker count, not a measurement; the
    budgets are what ptxas compiles without spills (test_kernels_fit_sm90)."""
    chunks = _register_budget(budget)
    [r] = _persistent_kernels(reports, cell, "forward", "__nv_bfloat16")
    for H in (256, 512, 768, 1024):
        d = _fit(H, H, G, 16, 2, r["registers"], r.get("shared", 0))
        assert d["persistent"], (cell, H, d)
        K = d["workers"]
        units = _largest_slice(H, K, 8 if H >= 32 * K else 1)
        split = _k_split(G * units, H, 16)
        holds = split is not None and split[1] <= chunks
        assert holds == (H <= largest), (cell, H, K, units, split, chunks)
