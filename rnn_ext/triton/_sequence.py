"""Host side of the Triton sequence ops: buffers, the choice of strategy, the
launches, and the weight gradients (one large product each, after the loop).

Nothing here checks its inputs: _ops.py does, before calling in.
"""
import contextlib
import os

import torch
import triton

from . import _fit
from . import _kernels as K
from ._compat import patch_interpreter

patch_interpreter()

STRATEGIES = ("auto", "persistent", "grid", "step")
STRATEGY_ENV = "RNN_EXT_TRITON_STRATEGY"

# ------------------------------------------------------------ crossover ----
# strategy="auto" runs a sequence "persistent" -- one launch for all T steps,
# W_hh read once and kept on chip -- whenever its persistent kernels fit one
# thread block of the GPU, else "grid" (one launch of many programs, each
# owning a slice of the hidden units; see below for where "auto" takes it).  What fits is measured, not guessed: _fit.py reads
# the shared memory, registers and spill of the kernels compiled for sm_90
# (rnn_ext/triton/persistent_sm90.json, written by tests/_triton_sm90.py and
# checked against fresh compiles in make test).  The tiles are W_hh as
# n_gates tiles of [pad(H), pad(K)] plus W_hr as [pad(H), pad(P)], padded to
# powers of two of at least 16; whether H and K are multiples of 16 matters
# too (Triton's launcher specialises the kernel on it).  (Whether persistent is also the faster one
# at every size that fits has not been timed on a GPU yet.)
PERSISTENT_NUM_WARPS = 8


def _pad(n):
    """Tile extent covering n: a power of two, at least 16 (tl.dot minimum)."""
    return max(16, triton.next_power_of_2(n))


def why_not_persistent(n_gates, H, K, P, dtype, device=None, precision="ieee", allow_spill=False):
    """None if the persistent kernels fit the GPU, else the reason (see _fit)."""
    limit = _fit.shared_limit(device)
    aligned = _fit.aligned(H, K)
    reason = _fit.why_not_fit(n_gates, _pad(H), _pad(K), P, dtype, precision, limit, allow_spill, aligned)
    if reason is None:
        return None
    cell = {3: "GRU", 1: "RNN"}.get(n_gates, "LSTM")
    size = f"H={H}" + (f" P={P}" if P else "")
    largest = _fit.largest_fitting_block_h(n_gates, _pad(K), P, dtype, precision, limit, allow_spill, aligned)
    if largest:
        hint = f"; the largest hidden size that fits is {largest}" + (f" (with P={P})" if P else "")
    else:
        hint = "; no hidden size fits" + (f" with P={P}" if P else "")
    return f"a {cell} with {size} in {str(dtype).replace('torch.', '')}: {reason}{hint}"


def use_persistent(n_gates, H, K, P, dtype, device=None, precision="ieee"):
    """The crossover rule of strategy="auto": the kernels fit, without spill."""
    return why_not_persistent(n_gates, H, K, P, dtype, device, precision) is None


# Past the persistent crossover "auto" runs "grid": the whole sequence in
# one launch of many programs (see _kernels.py, "grid strategy"), at every
# hidden size.  The "step" strategy -- a Python loop launching one kernel
# per step -- stays only as an explicit fallback: it needs no co-resident
# programs and no cooperative launch, so it runs where a cooperative launch
# is refused (a device or driver without it, a grid the device cannot hold),
# and it is the tested baseline the grid kernels are compared with.
#
# The grid kernels have not run on a GPU yet (their grid barrier, which the
# interpreter runs with one program, least of all), so on a real GPU "auto"
# keeps "step" past the crossover until a committed GPU result shows the grid
# kernels pass there; by name ("grid", or RNN_EXT_TRITON_STRATEGY=grid) they
# run on a GPU today.  Under the interpreter (the CPU test suite) "auto"
# runs them, so every test of "auto" exercises them.
GRID_IN_AUTO_ON_GPU = False


def _auto_takes_grid(device):
    return GRID_IN_AUTO_ON_GPU or device is None or torch.device(device).type != "cuda"


def resolve_strategy(strategy, n_gates, H, K, P, dtype, device=None, precision="ieee"):
    """"auto" -> the strategy that runs; "persistent" asked for by name (or
    by RNN_EXT_TRITON_STRATEGY) where its kernels cannot launch is an error,
    raised before anything is compiled."""
    if strategy == "auto":
        if use_persistent(n_gates, H, K, P, dtype, device, precision):
            return "persistent"
        return "grid" if _auto_takes_grid(device) else "step"
    if strategy == "persistent":
        reason = why_not_persistent(n_gates, H, K, P, dtype, device, precision, allow_spill=True)
        if reason is not None:
            raise RuntimeError(f"rnn_ext: Triton strategy 'persistent' cannot run {reason}. "
                               f"Use strategy 'grid', 'step' or 'auto' (environment variable {STRATEGY_ENV}).")
    return strategy


def default_strategy():
    """strategy=None means the environment's RNN_EXT_TRITON_STRATEGY, else auto."""
    return os.environ.get(STRATEGY_ENV, "auto") or "auto"


# ------------------------------------------------------------- buffers ----
# Test hook: when True, every buffer a kernel is expected to fill completely
# starts out as NaN instead of uninitialised memory, so an element a kernel
# forgot to write shows up in the results.
POISON_BUFFERS = False


def _buffer(shape, like, dtype=None):
    dtype = dtype or like.dtype
    if POISON_BUFFERS:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _tl_acc(dtype):
    return K.tl.float64 if dtype == torch.float64 else K.tl.float32


def _precision(dtype):
    """fp32 products follow PyTorch's TF32 switch for matmuls, as cuBLAS does."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _device_guard(t):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _lengths_on(lengths, like):
    return None if lengths is None else lengths.to(like.device)


# Tiles of the step kernels: BLOCK_B rows x BLOCK_N hidden units per
# program, times 4 (LSTM) or 3 (GRU) gate accumulators; K is walked in
# BLOCK_K chunks.  These sizes compile for sm_90 without register spills.
def _step_tiles(B, dtype):
    """(BLOCK_B, BLOCK_N, BLOCK_K, num_warps)"""
    rows = max(16, triton.next_power_of_2(B))
    if dtype in (torch.float16, torch.bfloat16):
        block_b = min(64, rows)
        return block_b, 32, 64, 8 if block_b == 64 else 4
    if dtype == torch.float64:
        return min(32, rows), 16, 16, 4
    return min(32, rows), 32, 32, 4


# Tiles of the grid kernels: a program loops over batch tiles and its units
# inside a step, so the tiles need not grow with B; the smallest batch tile
# (the dot minimum) keeps every grid kernel free of register spill on sm_90
# (tests/_triton_sm90.py compiles them; the step tiles at B = 64 spill there).
def _grid_tiles(dtype):
    """(BLOCK_B, BLOCK_N, BLOCK_K, num_warps)"""
    if dtype == torch.float64:
        return 16, 16, 16, 4
    if dtype == torch.float32:
        return 16, 32, 16, 8
    return 16, 32, 32, 4


# Rows per persistent program: the dot minimum.  More programs over the
# batch, and the least state next to the weights.
PERSISTENT_BLOCK_B = 16


# ---------------------------------------------------------- grid launch ----
# Test hooks.  GRID_PROGRAMS forces the number of programs K of a grid
# launch.  GRID_STEPWISE launches the grid kernels once per step (and per
# phase of a projected step) with K programs and no barrier: the interpreter
# runs programs one after another, so K > 1 programs of one launch would
# wait at the first barrier for programs that never run; with a launch per
# phase the launch boundary is the barrier, and the same kernel code runs
# the same slices.  (The default, one launch of the whole sequence, runs
# with one program under the interpreter, where the barrier is trivially
# passed.)
GRID_PROGRAMS = None
GRID_STEPWISE = False
# The SM count the grid is sized for where there is no GPU (an H100's).
H100_SMS = 132


def _interpreting():
    return K.INTERPRETED


_SLICE_TABLES = {}


def slice_table(n, programs, align, device):
    """[programs, 2] int32: [begin, end) of program k's share of [0, n), from
    partition::split itself (rnn_ext._C._partition_slices); cached, so that
    a launch copies nothing from the host (CUDA graph capture allows none)."""
    key = (n, programs, align, str(device))
    table = _SLICE_TABLES.get(key)
    if table is None:
        from .. import _C

        table = torch.tensor(_C._partition_slices(n, programs, align), dtype=torch.int32, device=device)
        _SLICE_TABLES[key] = table
    return table


def resident_blocks_per_sm(num_warps, registers, shared_bytes, threads_per_sm=2048, regs_per_sm=65536,
                           shared_per_sm=233472):
    """Blocks of a compiled kernel one SM holds at once (defaults: sm_90):
    bounded by threads, by registers (allocated per warp in units of 256)
    and by shared memory (plus the 1 KiB the runtime reserves per block).
    An estimate: the cooperative launch checks it (an impossible grid fails
    to launch instead of deadlocking)."""
    threads = 32 * num_warps
    blocks = threads_per_sm // threads
    if registers:
        per_warp = -(-registers * 32 // 256) * 256
        blocks = min(blocks, regs_per_sm // (per_warp * num_warps))
    if shared_bytes:
        blocks = min(blocks, shared_per_sm // (shared_bytes + 1024))
    return max(blocks, 0)


def grid_programs(chunks, sms, blocks_per_sm):
    """K: one program per chunk of units while the device holds them all at
    once (cooperative launch), else as many as it holds; at least one."""
    return max(1, min(chunks, sms * max(blocks_per_sm, 1)))


def _device_programs(kernel, chunks, like, args, kwargs):
    """(K, local, registers) for a real launch: K is the device's SM count
    times the blocks per SM of the kernel as compiled (registers, shared
    memory); local, the bytes of local memory per thread of the compiled
    kernel (0 where nothing is compiled: under the interpreter or with
    GRID_PROGRAMS set)."""
    if GRID_PROGRAMS is not None:
        return GRID_PROGRAMS, 0, 0
    if _interpreting() or not like.is_cuda:
        return 1, 0, 0  # programs run one after another: only K = 1 passes a barrier
    props = torch.cuda.get_device_properties(like.device)
    compiled = kernel.warmup(*args, grid=(1,), **kwargs)
    init = getattr(compiled, "_init_handles", None)
    if init is not None:
        init()
    per_sm = resident_blocks_per_sm(
        kwargs.get("num_warps", 4), getattr(compiled, "n_regs", 0), compiled.metadata.shared,
        props.max_threads_per_multi_processor, props.regs_per_multiprocessor,
        props.shared_memory_per_multiprocessor)
    return (grid_programs(chunks, props.multi_processor_count, per_sm), getattr(compiled, "n_spills", 0) or 0,
            getattr(compiled, "n_regs", 0) or 0)


# ------------------------------------------------ resident weights ----
# A grid program that owns exactly one tile of BLOCK_N hidden units (the
# program count equals cdiv(H, BLOCK_N)) can load its share of W_hh once,
# before the time loop, and keep it for the whole sequence: forward, each
# gate's W_hh^T rows of its units, G tiles of [pad(K), BLOCK_N]; backward,
# W_hh's columns of its units, one tile of [pad(H), BLOCK_N] per gate's
# rows.  Each step's product is then one tl.dot per tile against the kept
# tiles (_kernels._times) instead of BLOCK_K chunks read from L2.
# Compiled for sm_90, Triton stages the tiles in shared memory (the
# kernel's shared memory grows by at least the tiles' bytes) and, for the
# fp16/bf16 tensor-core dots, apparently in registers as well (the fp16
# LSTM backward: 156 registers streamed, 254 resident at 32 KiB).  The
# budget bounds the tiles' bytes per program where every resident grid
# kernel compiled (tests/_triton_sm90.py, every cell, forward and backward)
# within sm_90's shared memory, without spill and below the register cap
# (numbers in benchmarks/NOTES.md): fp32 64 KiB (at 128 KiB the LSTM
# backward needs 256 KiB of shared memory); fp16/bf16 32 KiB with H a
# multiple of 16, which Triton's launcher specialises on (the LSTM backward
# at 254 registers; at 64 KiB the LSTM and GRU backward sit at the cap of
# 255 and the RNN backward spills 40 bytes), else 16 KiB (at 32 KiB, H = 100 or 127, the LSTM and GRU backward
# reach 255 registers and spill 16 bytes; at 16 KiB, H = 63, 250 and 168
# registers).  On a GPU the kernel as compiled there is checked too
# (spills_registers).
RESIDENT_BUDGET = {torch.float32: 64 * 1024, torch.float16: 32 * 1024, torch.bfloat16: 32 * 1024}
RESIDENT_BUDGET_UNALIGNED = {torch.float32: 64 * 1024, torch.float16: 16 * 1024, torch.bfloat16: 16 * 1024}
# The local memory (stack frame) cuobjdump reports for a few fp32 grid
# kernels at 64-84 registers, weights streamed or resident alike (so not
# register pressure): at most 16 bytes.
GRID_STACK_BYTES = 16
MAX_REGISTERS = 255


def spills_registers(local_bytes, registers):
    """Whether a compiled kernel's local memory is register spill: more than
    the small stack frame, or any at the register cap."""
    return local_bytes > GRID_STACK_BYTES or (local_bytes > 0 and registers >= MAX_REGISTERS)


def resident_budget(dtype, H):
    """Bytes of resident W_hh tiles a program may hold (None: not kept)."""
    table = RESIDENT_BUDGET if H % 16 == 0 else RESIDENT_BUDGET_UNALIGNED
    return table.get(dtype)


# Test hook: None, the rule decides; True, resident wherever the kernel can
# be (one unit tile per program, no projection), whatever the dtype, the
# budget and the spill; False, never.
GRID_RESIDENT = None


def resident_tile_shape(n_gates, H, K, dtype, backward):
    """(tiles, rows, columns) of a grid program's resident W_hh: one tile per
    gate, over the K inputs (forward) or the gate's H rows (backward)."""
    bn = _grid_tiles(dtype)[1]
    return n_gates, _pad(H if backward else K), bn


def resident_bytes(n_gates, H, K, dtype, backward):
    tiles, rows, columns = resident_tile_shape(n_gates, H, K, dtype, backward)
    return tiles * rows * columns * torch.empty((), dtype=dtype).element_size()


def why_not_resident(n_gates, H, K, P, dtype, programs, backward=False, spill_bytes=0, registers=0):
    """None if a grid launch of `programs` programs keeps its W_hh tiles
    resident, else the reason (the rule; GRID_RESIDENT overrides it in tests)."""
    chunks = triton.cdiv(H, _grid_tiles(dtype)[1])
    if P:
        return "a projection (proj_size) is not kept resident: its second product streams W_hr"
    if programs != chunks:
        return (f"{programs} programs for {chunks} unit tiles of H={H}: only a program owning exactly "
                f"one unit tile keeps its weights")
    if GRID_RESIDENT is True:
        return None
    if GRID_RESIDENT is False:
        return "switched off (GRID_RESIDENT = False)"
    name = str(dtype).replace('torch.', '')
    budget = resident_budget(dtype, H)
    if budget is None:
        return f"{name} weights are not kept resident (not a speed dtype)"
    need = resident_bytes(n_gates, H, K, dtype, backward)
    if need > budget:
        tiles, rows, columns = resident_tile_shape(n_gates, H, K, dtype, backward)
        aligned = "" if H % 16 == 0 else " with H not a multiple of 16"
        return (f"{tiles} x [{rows}, {columns}] tiles of W_hh per program are {need // 1024} KiB, over the "
                f"{budget // 1024} KiB budget of {name}{aligned}")
    if spills_registers(spill_bytes, registers):
        return (f"the resident kernel as compiled spills ({spill_bytes} bytes of local memory per thread "
                f"at {registers} registers)")
    return None


def launch_grid(kernel, like, T, units, cols, block_n, args, kwargs, rule):
    """One launch of a grid kernel for the whole sequence (or, with
    GRID_STEPWISE, one per step and phase).  units: hidden units split over
    the programs; cols: projection columns (0: none; only the LSTM kernels
    take them: None for the others); rule: (n_gates, H, K, P, dtype,
    backward) for why_not_resident.  Returns whether the weights were kept
    resident."""
    phased = cols is not None
    cols = cols or 0
    chunks = max(triton.cdiv(units, block_n), triton.cdiv(cols, block_n))
    kwargs = dict(kwargs, s_begin=0, s_end=T, SYNC=True, RESIDENT=False, BLOCK_R=0)
    if phased:
        kwargs["PHASES"] = 3
    ctr = torch.zeros(1, dtype=torch.int32, device=like.device)
    kwargs["ctr_ptr"] = ctr
    # Placeholders while compiling for the sizing (the grid is not a
    # compile-time constant: one compile serves every K).
    kwargs["units_ptr"] = slice_table(units, 1, block_n, like.device)
    if phased:
        kwargs["cols_ptr"] = kwargs["units_ptr"]
    n_gates, H, Kd, P, dtype, backward = rule
    resident = False
    if why_not_resident(n_gates, H, Kd, P, dtype, chunks, backward) is None:
        # Sized (and checked for spill) as the resident kernel compiles.
        block_r = resident_tile_shape(n_gates, H, Kd, dtype, backward)[1]
        kw = dict(kwargs, RESIDENT=True, BLOCK_R=block_r)
        programs, local, regs = _device_programs(kernel, chunks, like, args, dict(kw, launch_cooperative_grid=True))
        resident = why_not_resident(n_gates, H, Kd, P, dtype, programs, backward, local, regs) is None
        if resident:
            kwargs = kw
    if not resident:
        programs = _device_programs(kernel, chunks, like, args, dict(kwargs, launch_cooperative_grid=True))[0]
    kwargs["units_ptr"] = slice_table(units, programs, block_n, like.device)
    if phased:
        kwargs["cols_ptr"] = slice_table(cols, programs, block_n, like.device) if cols else kwargs["units_ptr"]
    if GRID_STEPWISE:
        for s in range(T):
            for phases in ((1, 2) if phased and cols else (3,)):
                kw = dict(kwargs, s_begin=s, s_end=s + 1, SYNC=False)
                if phased:
                    kw["PHASES"] = phases
                kernel[(programs,)](*args, **kw)
        return resident
    if programs > 1 and _interpreting():
        raise RuntimeError("rnn_ext: a grid launch of more than one program cannot run under the "
                           "Triton interpreter (its programs run one after another and would wait "
                           "at the first barrier forever); set GRID_STEPWISE")
    kernel[(programs,)](*args, launch_cooperative_grid=True, **kwargs)
    return resident


# ---------------------------------------------------------------- LSTM ----
def lstm_forward(gx, w_hh, b_hh, w_hr, h0, c0, lengths, strategy):
    T, B, G = gx.shape
    H = G // 4
    P = w_hr.shape[0] if w_hr is not None else 0
    Kd = P or H
    dt = gx.dtype
    y = _buffer((T, B, Kd), gx)
    ws = _buffer((T, B, 5 * H), gx, acc_dtype(dt))
    proj_in = _buffer((T if P else 0, B, H), gx)
    h_n = _buffer((B, Kd), gx)
    c_n = _buffer((B, H), gx)
    L = _lengths_on(lengths, gx)
    has_len = L is not None
    dummy = gx
    prec = _precision(dt)
    strategy = resolve_strategy(strategy, 4, H, Kd, P, dt, gx.device, prec)
    with _device_guard(gx):
        if strategy == "persistent":
            grid = (triton.cdiv(B, PERSISTENT_BLOCK_B),)
            K.lstm_fwd_persistent_kernel[grid](
                gx, w_hh, b_hh if b_hh is not None else dummy, w_hr if P else dummy,
                h0, c0, L if has_len else dummy, ws, y, proj_in if P else dummy, h_n, c_n,
                T, B, H, Kd,
                HAS_BIAS=b_hh is not None, HAS_LEN=has_len, PROJ=bool(P), PRECISION=prec,
                BLOCK_B=PERSISTENT_BLOCK_B, BLOCK_H=_pad(H), BLOCK_K=_pad(Kd),
                num_warps=PERSISTENT_NUM_WARPS)
            return y, h_n, c_n, ws, proj_in
        if strategy == "grid":
            bb, bn, bk, warps = _grid_tiles(dt)
            launch_grid(K.lstm_fwd_grid_kernel, gx, T, H, P, bn,
                        (gx, w_hh, b_hh if b_hh is not None else dummy, w_hr if P else dummy, h0, c0,
                         L if has_len else dummy, ws, y, proj_in if P else dummy, h_n, c_n),
                        dict(T=T, B=B, H=H, K=Kd, HAS_BIAS=b_hh is not None, HAS_LEN=has_len, PROJ=bool(P),
                             PRECISION=prec, BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps),
                        (4, H, Kd, P, dt, False))
            return y, h_n, c_n, ws, proj_in
        bb, bn, bk, warps = _step_tiles(B, dt)
        # strategy "step": the explicit fallback (see "grid" above).
        grid = (triton.cdiv(B, bb), triton.cdiv(H, bn))
        grid_p = (triton.cdiv(B, bb), triton.cdiv(P, bn)) if P else None
        for t in range(T):
            hprev = h0 if t == 0 else y[t - 1]
            hout = proj_in[t] if P else y[t]
            K.lstm_fwd_step_kernel[grid](
                gx[t], hprev, w_hh, b_hh if b_hh is not None else dummy, c0, h0,
                ws[t - 1] if t > 0 else ws[t], ws[t], hout, h_n, c_n,
                L if has_len else dummy, t, T, B, H, Kd,
                HAS_BIAS=b_hh is not None, HAS_LEN=has_len, FIRST=t == 0, WRITE_HN=not P,
                PRECISION=prec, BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
            if P:
                # y_t = proj_in_t @ W_hr^T; M(k, n) = W_hr[n, k].
                K.row_product_kernel[grid_p](
                    proj_in[t], H, w_hr, 1, H, H,
                    dummy, dummy, h0, y[t], h_n, L if has_len else dummy, t, T, B, P,
                    ADD_GRAD=False, WRITE_FINAL=True, FIRST=t == 0, HAS_LEN=has_len,
                    ACC=_tl_acc(dt), PRECISION=prec, BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
    return y, h_n, c_n, ws, proj_in


def lstm_backward(grad_y, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, y, ws, proj_in,
                  lengths, grad_ws, strategy):
    T, B, Kd = y.shape
    H = ws.shape[2] // 5
    P = w_hr.shape[0] if w_hr is not None else 0
    dt = y.dtype
    d_gates = _buffer((T, B, 4 * H), y)
    d_proj = _buffer((T if P else 0, B, Kd), y)
    L = _lengths_on(lengths, y)
    has_len = L is not None
    has_gws = grad_ws is not None
    dummy = y
    prec = _precision(dt)
    strategy = resolve_strategy(strategy, 4, H, Kd, P, dt, y.device, prec)
    with _device_guard(y):
        if strategy == "persistent":
            d_h0 = _buffer((B, Kd), y)
            d_c0 = _buffer((B, H), y)
            grid = (triton.cdiv(B, PERSISTENT_BLOCK_B),)
            K.lstm_bwd_persistent_kernel[grid](
                grad_y, grad_h_n, grad_c_n, w_hh, w_hr if P else dummy, c0, ws,
                grad_ws if has_gws else dummy, L if has_len else dummy,
                d_gates, d_proj if P else dummy, d_h0, d_c0, T, B, H, Kd,
                HAS_LEN=has_len, HAS_GWS=has_gws, PROJ=bool(P), PRECISION=prec,
                BLOCK_B=PERSISTENT_BLOCK_B, BLOCK_H=_pad(H), BLOCK_K=_pad(Kd),
                num_warps=PERSISTENT_NUM_WARPS)
        else:
            dc = grad_c_n.to(acc_dtype(dt), copy=True).contiguous()
            bb, bn, bk, warps = _step_tiles(B, dt)
            grid = (triton.cdiv(B, bb), triton.cdiv(H, bn))
            grid_p = (triton.cdiv(B, bb), triton.cdiv(P, bn)) if P else None
            if strategy == "grid":
                bb, bn, bk, warps = _grid_tiles(dt)
                launch_grid(K.lstm_bwd_grid_kernel, y, T, H, P, bn,
                            (grad_y, grad_h_n, w_hh, w_hr if P else dummy, c0, ws,
                             grad_ws if has_gws else dummy, dc, d_gates, d_proj if P else dummy,
                             L if has_len else dummy),
                            dict(T=T, B=B, H=H, K=Kd, HAS_LEN=has_len, HAS_GWS=has_gws, PROJ=bool(P),
                                 PRECISION=prec, ACC=_tl_acc(dt), BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk,
                                 num_warps=warps),
                            (4, H, Kd, P, dt, True))
            for t in reversed(range(T) if strategy == "step" else ()):
                # d_gates of step t+1 times W_hh; nothing after the last step.
                nxt, k_next = (d_gates[t + 1], 4 * H) if t + 1 < T else (d_gates[t], 0)
                if P:
                    K.row_product_kernel[grid_p](
                        nxt, 4 * H, w_hh, P, 1, k_next,
                        grad_y[t], grad_h_n, dummy, d_proj[t], dummy,
                        L if has_len else dummy, t, T, B, P,
                        ADD_GRAD=True, WRITE_FINAL=False, FIRST=False, HAS_LEN=has_len,
                        ACC=_tl_acc(dt), PRECISION=prec, BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
                    a, a_stride, m, m_k, k_a = d_proj[t], P, w_hr, H, P
                else:
                    a, a_stride, m, m_k, k_a = nxt, 4 * H, w_hh, H, k_next
                K.lstm_bwd_step_kernel[grid](
                    a, a_stride, m, m_k, 1, k_a, grad_y[t], grad_h_n,
                    ws[t], ws[t - 1] if t > 0 else ws[t], c0,
                    grad_ws[t] if has_gws else dummy, dc, d_gates[t],
                    L if has_len else dummy, t, T, B, H,
                    ADD_GRAD=not P, HAS_LEN=has_len, HAS_GWS=has_gws, FIRST=t == 0,
                    PRECISION=prec, BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
            # The gradient reaching h0: through step 0's product, or grad_h_n
            # itself for rows of length 0 (whose d_gates are all zero).
            d_h0 = torch.mm(d_gates[0], w_hh)
            if has_len:
                d_h0 = torch.where((L == 0).view(B, 1), grad_h_n, d_h0)
            d_c0 = dc.to(dt)
    # Weight gradients: one large product over all steps.  The recurrent
    # input of step t is h0 (t = 0) or y[t-1]; inactive rows have zero
    # gate gradients.
    d_w_hh = torch.mm(d_gates[0].t(), h0)
    if T > 1:
        d_w_hh.addmm_(d_gates[1:].reshape((T - 1) * B, 4 * H).t(), y[:-1].reshape((T - 1) * B, Kd))
    d_b_hh = d_gates.sum((0, 1))
    if P:
        d_w_hr = torch.mm(d_proj.reshape(T * B, P).t(), proj_in.reshape(T * B, H))
    else:
        d_w_hr = y.new_empty((0,))
    return d_gates, d_w_hh, d_b_hh, d_w_hr, d_h0, d_c0


# ----------------------------------------------------------------- GRU ----
def gru_forward(gx, w_hh, b_hh, h0, lengths, strategy):
    T, B, G = gx.shape
    H = G // 3
    dt = gx.dtype
    y = _buffer((T, B, H), gx)
    ws = _buffer((T, B, 4 * H), gx, acc_dtype(dt))
    h_n = _buffer((B, H), gx)
    L = _lengths_on(lengths, gx)
    has_len = L is not None
    dummy = gx
    prec = _precision(dt)
    strategy = resolve_strategy(strategy, 3, H, H, 0, dt, gx.device, prec)
    with _device_guard(gx):
        if strategy == "persistent":
            grid = (triton.cdiv(B, PERSISTENT_BLOCK_B),)
            K.gru_fwd_persistent_kernel[grid](
                gx, w_hh, b_hh if b_hh is not None else dummy, h0, L if has_len else dummy,
                ws, y, h_n, T, B, H,
                HAS_BIAS=b_hh is not None, HAS_LEN=has_len, PRECISION=prec,
                BLOCK_B=PERSISTENT_BLOCK_B, BLOCK_H=_pad(H),
                num_warps=PERSISTENT_NUM_WARPS)
            return y, h_n, ws
        if strategy == "grid":
            bb, bn, bk, warps = _grid_tiles(dt)
            launch_grid(K.gru_fwd_grid_kernel, gx, T, H, None, bn,
                        (gx, w_hh, b_hh if b_hh is not None else dummy, h0, L if has_len else dummy, ws, y, h_n),
                        dict(T=T, B=B, H=H, HAS_BIAS=b_hh is not None, HAS_LEN=has_len, PRECISION=prec,
                             BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps),
                        (3, H, H, 0, dt, False))
            return y, h_n, ws
        bb, bn, bk, warps = _step_tiles(B, dt)
        grid = (triton.cdiv(B, bb), triton.cdiv(H, bn))
        for t in range(T):
            K.gru_fwd_step_kernel[grid](
                gx[t], h0 if t == 0 else y[t - 1], w_hh, b_hh if b_hh is not None else dummy,
                ws[t], y[t], h_n, L if has_len else dummy, t, T, B, H,
                HAS_BIAS=b_hh is not None, HAS_LEN=has_len, FIRST=t == 0, PRECISION=prec,
                BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
    return y, h_n, ws


def gru_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, strategy):
    T, B, H = y.shape
    dt = y.dtype
    d_gates = _buffer((T, B, 3 * H), y)
    d_hh = _buffer((T, B, 3 * H), y)
    L = _lengths_on(lengths, y)
    has_len = L is not None
    has_gws = grad_ws is not None
    dummy = y
    prec = _precision(dt)
    strategy = resolve_strategy(strategy, 3, H, H, 0, dt, y.device, prec)
    with _device_guard(y):
        if strategy == "persistent":
            d_h0 = _buffer((B, H), y)
            grid = (triton.cdiv(B, PERSISTENT_BLOCK_B),)
            K.gru_bwd_persistent_kernel[grid](
                grad_y, grad_h_n, w_hh, h0, y, ws, grad_ws if has_gws else dummy,
                L if has_len else dummy, d_gates, d_hh, d_h0, T, B, H,
                HAS_LEN=has_len, HAS_GWS=has_gws, PRECISION=prec,
                BLOCK_B=PERSISTENT_BLOCK_B, BLOCK_H=_pad(H),
                num_warps=PERSISTENT_NUM_WARPS)
        else:
            # Gradient reaching h_t other than through the product: grad_h_n
            # until a row's last step, then dh_{t+1} * z_{t+1}.
            carry = grad_h_n.to(acc_dtype(dt), copy=True).contiguous()
            bb, bn, bk, warps = _step_tiles(B, dt)
            grid = (triton.cdiv(B, bb), triton.cdiv(H, bn))
            if strategy == "grid":
                bb, bn, bk, warps = _grid_tiles(dt)
                launch_grid(K.gru_bwd_grid_kernel, y, T, H, None, bn,
                            (grad_y, w_hh, h0, y, ws, grad_ws if has_gws else dummy, carry, d_gates, d_hh,
                             L if has_len else dummy),
                            dict(T=T, B=B, H=H, HAS_LEN=has_len, HAS_GWS=has_gws, PRECISION=prec,
                                 BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps),
                            (3, H, H, 0, dt, True))
            for t in reversed(range(T) if strategy == "step" else ()):
                nxt, k_next = (d_hh[t + 1], 3 * H) if t + 1 < T else (d_hh[t], 0)
                K.gru_bwd_step_kernel[grid](
                    nxt, k_next, w_hh, grad_y[t], h0 if t == 0 else y[t - 1], ws[t],
                    grad_ws[t] if has_gws else dummy, carry, d_gates[t], d_hh[t],
                    L if has_len else dummy, t, T, B, H,
                    HAS_LEN=has_len, HAS_GWS=has_gws, PRECISION=prec,
                    BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
            d_h0 = (carry + torch.mm(d_hh[0], w_hh).to(carry.dtype)).to(dt)
    d_w_hh = torch.mm(d_hh[0].t(), h0)
    if T > 1:
        d_w_hh.addmm_(d_hh[1:].reshape((T - 1) * B, 3 * H).t(), y[:-1].reshape((T - 1) * B, H))
    return d_gates, d_w_hh, d_hh.sum((0, 1)), d_h0


# ----------------------------------------------------------------- RNN ----
# nn.RNN's cell: one gate tile, the same two strategies and the same
# crossover rule (n_gates = 1).
def rnn_forward(gx, w_hh, b_hh, h0, lengths, relu, strategy):
    T, B, H = gx.shape
    dt = gx.dtype
    y = _buffer((T, B, H), gx)
    ws = _buffer((T, B, H), gx, acc_dtype(dt))
    h_n = _buffer((B, H), gx)
    L = _lengths_on(lengths, gx)
    has_len = L is not None
    dummy = gx
    prec = _precision(dt)
    strategy = resolve_strategy(strategy, 1, H, H, 0, dt, gx.device, prec)
    with _device_guard(gx):
        if strategy == "persistent":
            grid = (triton.cdiv(B, PERSISTENT_BLOCK_B),)
            K.rnn_fwd_persistent_kernel[grid](
                gx, w_hh, b_hh if b_hh is not None else dummy, h0, L if has_len else dummy,
                ws, y, h_n, T, B, H,
                HAS_BIAS=b_hh is not None, HAS_LEN=has_len, RELU=relu, PRECISION=prec,
                BLOCK_B=PERSISTENT_BLOCK_B, BLOCK_H=_pad(H), num_warps=PERSISTENT_NUM_WARPS)
            return y, h_n, ws
        if strategy == "grid":
            bb, bn, bk, warps = _grid_tiles(dt)
            launch_grid(K.rnn_fwd_grid_kernel, gx, T, H, None, bn,
                        (gx, w_hh, b_hh if b_hh is not None else dummy, h0, L if has_len else dummy, ws, y, h_n),
                        dict(T=T, B=B, H=H, HAS_BIAS=b_hh is not None, HAS_LEN=has_len, RELU=relu,
                             PRECISION=prec, BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps),
                        (1, H, H, 0, dt, False))
            return y, h_n, ws
        bb, bn, bk, warps = _step_tiles(B, dt)
        grid = (triton.cdiv(B, bb), triton.cdiv(H, bn))
        for t in range(T):
            K.rnn_fwd_step_kernel[grid](
                gx[t], h0 if t == 0 else y[t - 1], w_hh, b_hh if b_hh is not None else dummy,
                ws[t], y[t], h_n, L if has_len else dummy, t, T, B, H,
                HAS_BIAS=b_hh is not None, HAS_LEN=has_len, FIRST=t == 0, RELU=relu,
                PRECISION=prec, BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
    return y, h_n, ws


def rnn_backward(grad_y, grad_h_n, w_hh, h0, y, ws, lengths, grad_ws, relu, strategy):
    T, B, H = y.shape
    dt = y.dtype
    d_gates = _buffer((T, B, H), y)
    L = _lengths_on(lengths, y)
    has_len = L is not None
    has_gws = grad_ws is not None
    dummy = y
    prec = _precision(dt)
    strategy = resolve_strategy(strategy, 1, H, H, 0, dt, y.device, prec)
    with _device_guard(y):
        if strategy == "persistent":
            grid = (triton.cdiv(B, PERSISTENT_BLOCK_B),)
            K.rnn_bwd_persistent_kernel[grid](
                grad_y, grad_h_n, w_hh, ws, grad_ws if has_gws else dummy,
                L if has_len else dummy, d_gates, T, B, H,
                HAS_LEN=has_len, HAS_GWS=has_gws, RELU=relu, PRECISION=prec,
                BLOCK_B=PERSISTENT_BLOCK_B, BLOCK_H=_pad(H), num_warps=PERSISTENT_NUM_WARPS)
        elif strategy == "grid":
            bb, bn, bk, warps = _grid_tiles(dt)
            launch_grid(K.rnn_bwd_grid_kernel, y, T, H, None, bn,
                        (grad_y, grad_h_n, w_hh, ws, grad_ws if has_gws else dummy, d_gates,
                         L if has_len else dummy),
                        dict(T=T, B=B, H=H, HAS_LEN=has_len, HAS_GWS=has_gws, RELU=relu, PRECISION=prec,
                             BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps),
                        (1, H, H, 0, dt, True))
        else:
            bb, bn, bk, warps = _step_tiles(B, dt)
            grid = (triton.cdiv(B, bb), triton.cdiv(H, bn))
            for t in reversed(range(T)):
                nxt, k_next = (d_gates[t + 1], H) if t + 1 < T else (d_gates[t], 0)
                K.rnn_bwd_step_kernel[grid](
                    nxt, k_next, w_hh, grad_y[t], grad_h_n, ws[t],
                    grad_ws[t] if has_gws else dummy, d_gates[t],
                    L if has_len else dummy, t, T, B, H,
                    HAS_LEN=has_len, HAS_GWS=has_gws, RELU=relu, PRECISION=prec,
                    BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
    # The gradient reaching h0 (both strategies): through step 0's product,
    # or grad_h_n itself for rows of length 0 (whose gradients are all zero).
    d_h0 = torch.mm(d_gates[0], w_hh)
    if has_len:
        d_h0 = torch.where((L == 0).view(B, 1), grad_h_n, d_h0)
    # One gradient serves the input gates and the recurrent product.
    d_w_hh = torch.mm(d_gates[0].t(), h0)
    if T > 1:
        d_w_hh.addmm_(d_gates[1:].reshape((T - 1) * B, H).t(), y[:-1].reshape((T - 1) * B, H))
    return d_gates, d_w_hh, d_gates.sum((0, 1)), d_h0
