"""Triton kernels of the sequence ops.

Three strategies (the choice is made in _sequence.py; "grid" is below,
under "grid strategy"):

* persistent: one launch for the whole sequence.  Each program owns a tile
  of BLOCK_B batch rows and every hidden unit; it loads W_hh (and W_hr) once
  and keeps it, with the recurrent state, on chip across all time steps.
* step: one launch per time step.  Each program owns a (batch tile, hidden
  tile) block; it computes its part of the recurrent product and runs the
  gate epilogue (activations, cell update, workspace/output writes) on the
  accumulators in the same kernel.

The math and the workspace layout are those of csrc/include/rnn_ext/gate_math.h
and step_kernels.h:
  LSTM workspace [T, B, 5H] = i, f, g, o (activated), c
  GRU  workspace [T, B, 4H] = r, z, n (activated), hn = W_hn h + b_hn
  RNN  workspace [T, B, H]  = h (activated output)
The workspace (and every gate computation) is in the accumulation type: fp32
for fp16/bf16 storage, else the storage type.  A row with t >= lengths[b]
writes zeros to its output and workspace and keeps its state.

Only core tl operations are used (no libdevice), so the kernels also run
under the Triton interpreter; every tl.dot has tiles of at least 16 in each
dimension, as on the GPU.
"""
import triton
import triton.language as tl


# ------------------------------------------------------------ gate math ----
@triton.jit
def _sigmoid(x):
    # exp of a non-positive number only: no overflow for either sign.
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _tanh(x):
    # tanh(|x|) = (1 - e) / (1 + e) with e = exp(-2|x|), i.e. 2*sigmoid(2x) - 1,
    # exact at the tails.  Near 0, 1 - e cancels (an error of about one ulp
    # of 1, not of tanh(x)), so there an odd polynomial x + x^3 P(x^2) takes
    # over: in fp32 for |x| < 0.625 the minimax fit of gate_math.h's
    # host_tanhf; in fp64 for |x| < 0.1 the Taylor series to x^15 (the next
    # term is below 1e-19 relative there).
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(x >= 0, t, -t)
    z = x * x
    if x.dtype == tl.float64:
        p = -929569.0 / 638512875.0
        p = p * z + 21844.0 / 6081075.0
        p = p * z - 1382.0 / 155925.0
        p = p * z + 62.0 / 2835.0
        p = p * z - 17.0 / 315.0
        p = p * z + 2.0 / 15.0
        p = p * z - 1.0 / 3.0
        small = x + x * z * p
        return tl.where(a < 0.1, small, t)
    else:
        p = -5.7170446962e-3
        p = p * z + 2.0650586113e-2
        p = p * z - 5.3743496537e-2
        p = p * z + 1.3331490755e-1
        p = p * z - 3.3333283663e-1
        small = x + x * z * p
        return tl.where(a < 0.625, small, t)


@triton.jit
def _row_lengths(len_ptr, offs_b, B, T, HAS_LEN: tl.constexpr):
    """lengths[b] for the rows of the tile; T for every row without lengths."""
    if HAS_LEN:
        L = tl.load(len_ptr + offs_b, mask=offs_b < B, other=0)
    else:
        L = tl.zeros_like(offs_b).to(tl.int64) + T
    return L


@triton.jit
def _rows_times(acc, a_ptr, a_stride, m_ptr, m_stride_k, m_stride_n, offs_b, offs_n,
                B, N, KA, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += A[offs_b, 0:KA] @ M[0:KA, offs_n], with A row-major (row stride
    a_stride) and M addressed through (m_stride_k, m_stride_n), so that W and
    W^T are both read in place.  KA = 0 adds nothing."""
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = offs_b[:, None] < B
    col_ok = offs_n[None, :] < N
    for k0 in range(0, KA, BLOCK_K):
        kk = k0 + offs_k
        a = tl.load(a_ptr + offs_b[:, None] * a_stride + kk[None, :],
                    mask=row_ok & (kk[None, :] < KA), other=0.0)
        m = tl.load(m_ptr + kk[:, None] * m_stride_k + offs_n[None, :] * m_stride_n,
                    mask=(kk[:, None] < KA) & col_ok, other=0.0)
        acc = tl.dot(a, m, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def _resident_tile(m_ptr, m_stride_k, m_stride_n, offs_n, N, KA, BLOCK_R: tl.constexpr):
    """M[0:KA, offs_n] as one [BLOCK_R, len(offs_n)] tile, zero past KA and
    N (same addressing as _rows_times): a grid program's share of W_hh,
    loaded once before the time loop when the weights stay resident."""
    kk = tl.arange(0, BLOCK_R)
    return tl.load(m_ptr + kk[:, None] * m_stride_k + offs_n[None, :] * m_stride_n,
                   mask=(kk[:, None] < KA) & (offs_n[None, :] < N), other=0.0)


@triton.jit
def _times(acc, a_ptr, a_stride, m_ptr, m_stride_k, m_stride_n, tile, offs_b, offs_n, B, N, KA,
           RESIDENT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += A[offs_b, 0:KA] @ M[0:KA, offs_n], the one product of every
    tile function.  RESIDENT: M's tile is `tile` (from _resident_tile, kept
    by the program across steps), one tl.dot with A's rows read whole;
    else M is read from global memory in BLOCK_K chunks (`tile` unused)."""
    if RESIDENT:
        kk = tl.arange(0, tile.shape[0])
        a = tl.load(a_ptr + offs_b[:, None] * a_stride + kk[None, :],
                    mask=(offs_b[:, None] < B) & (kk[None, :] < KA), other=0.0)
        acc = tl.dot(a, tile, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    else:
        acc = _rows_times(acc, a_ptr, a_stride, m_ptr, m_stride_k, m_stride_n, offs_b, offs_n,
                          B, N, KA, PRECISION, BLOCK_K)
    return acc


# ------------------------------------------------- step strategy: LSTM ----
# Each step kernel is a thin wrapper over a tile function: the (batch rows
# offs_b, hidden units offs_n) block of one step.  The grid kernels (below)
# run the very same tile functions over their slice of units, step after
# step, in one launch.  n_end bounds the units of the block (H for the step
# kernels, the end of the program's slice for the grid kernels); `first`
# (t == 0) is a constexpr in the step kernels and a runtime flag in the grid
# kernels.
@triton.jit
def _lstm_fwd_tile(gx_ptr, hprev_ptr, w_ptr, wt_i, wt_f, wt_g, wt_o, b_ptr, c0_ptr, h0_ptr, ws_prev_ptr,
                   ws_ptr, hout_ptr, hn_ptr, cn_ptr, len_ptr, t, T, B, H, K, offs_b, offs_n, n_end, first,
                   HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, WRITE_HN: tl.constexpr,
                   RESIDENT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    # wt_*: the gates' resident tiles of W_hh^T (if RESIDENT, see _times).
    ACC = ws_ptr.dtype.element_ty
    DT = hout_ptr.dtype.element_ty
    nm = offs_n < n_end
    mask = (offs_b[:, None] < B) & nm[None, :]
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)
    active = (t < L)[:, None]

    zero = tl.zeros([offs_b.shape[0], offs_n.shape[0]], dtype=ACC)
    acc_i = _times(zero, hprev_ptr, K, w_ptr, 1, K, wt_i, offs_b, offs_n, B, n_end, K,
                   RESIDENT, PRECISION, BLOCK_K)
    acc_f = _times(zero, hprev_ptr, K, w_ptr + H * K, 1, K, wt_f, offs_b, offs_n, B, n_end, K,
                   RESIDENT, PRECISION, BLOCK_K)
    acc_g = _times(zero, hprev_ptr, K, w_ptr + 2 * H * K, 1, K, wt_g, offs_b, offs_n, B, n_end, K,
                   RESIDENT, PRECISION, BLOCK_K)
    acc_o = _times(zero, hprev_ptr, K, w_ptr + 3 * H * K, 1, K, wt_o, offs_b, offs_n, B, n_end, K,
                   RESIDENT, PRECISION, BLOCK_K)

    gx = gx_ptr + offs_b[:, None] * (4 * H) + offs_n[None, :]
    acc_i += tl.load(gx, mask=mask, other=0.0).to(ACC)
    acc_f += tl.load(gx + H, mask=mask, other=0.0).to(ACC)
    acc_g += tl.load(gx + 2 * H, mask=mask, other=0.0).to(ACC)
    acc_o += tl.load(gx + 3 * H, mask=mask, other=0.0).to(ACC)
    if HAS_BIAS:
        acc_i += tl.load(b_ptr + offs_n, mask=nm, other=0.0).to(ACC)[None, :]
        acc_f += tl.load(b_ptr + H + offs_n, mask=nm, other=0.0).to(ACC)[None, :]
        acc_g += tl.load(b_ptr + 2 * H + offs_n, mask=nm, other=0.0).to(ACC)[None, :]
        acc_o += tl.load(b_ptr + 3 * H + offs_n, mask=nm, other=0.0).to(ACC)[None, :]

    state = offs_b[:, None] * H + offs_n[None, :]
    if first:
        c_prev = tl.load(c0_ptr + state, mask=mask, other=0.0).to(ACC)
    else:
        c_prev = tl.load(ws_prev_ptr + offs_b[:, None] * (5 * H) + 4 * H + offs_n[None, :],
                         mask=mask, other=0.0)
    i = _sigmoid(acc_i)
    f = _sigmoid(acc_f)
    g = _tanh(acc_g)
    o = _sigmoid(acc_o)
    c = f * c_prev + i * g
    h = o * _tanh(c)

    ws = ws_ptr + offs_b[:, None] * (5 * H) + offs_n[None, :]
    tl.store(ws, tl.where(active, i, 0.0), mask=mask)
    tl.store(ws + H, tl.where(active, f, 0.0), mask=mask)
    tl.store(ws + 2 * H, tl.where(active, g, 0.0), mask=mask)
    tl.store(ws + 3 * H, tl.where(active, o, 0.0), mask=mask)
    tl.store(ws + 4 * H, tl.where(active, c, 0.0), mask=mask)
    h_st = h.to(DT)
    tl.store(hout_ptr + state, tl.where(active, h_st, 0.0).to(DT), mask=mask)

    # Final states: written at each row's last step; rows of length 0 take
    # the initial state (written once, at t = 0).
    last = mask & (t == L - 1)[:, None]
    tl.store(cn_ptr + state, c.to(DT), mask=last)
    if WRITE_HN:
        tl.store(hn_ptr + state, h_st, mask=last)
    if first:
        empty = mask & (L == 0)[:, None]
        tl.store(cn_ptr + state, c_prev.to(DT), mask=empty)
        if WRITE_HN:
            tl.store(hn_ptr + state, tl.load(h0_ptr + state, mask=empty, other=0.0), mask=empty)


@triton.jit(do_not_specialize=["t"])
def lstm_fwd_step_kernel(
        gx_ptr,       # input gates of step t [B, 4H]
        hprev_ptr,    # recurrent input [B, K]: h0 at t = 0, else output of t-1
        w_ptr,        # W_hh [4H, K]
        b_ptr,        # b_hh [4H] (if HAS_BIAS)
        c0_ptr,       # [B, H]
        h0_ptr,       # [B, H] (read for h_n of empty rows if WRITE_HN)
        ws_prev_ptr,  # workspace of step t-1 [B, 5H] (unless FIRST)
        ws_ptr,       # workspace of step t [B, 5H]
        hout_ptr,     # [B, H]: the output (no projection) or the projection input
        hn_ptr, cn_ptr, len_ptr,
        t, T, B, H, K,
        HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, FIRST: tl.constexpr,
        WRITE_HN: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    _lstm_fwd_tile(gx_ptr, hprev_ptr, w_ptr, w_ptr, w_ptr, w_ptr, w_ptr, b_ptr, c0_ptr, h0_ptr, ws_prev_ptr,
                   ws_ptr, hout_ptr, hn_ptr, cn_ptr, len_ptr, t, T, B, H, K, offs_b, offs_n, H, FIRST,
                   HAS_BIAS, HAS_LEN, WRITE_HN, False, PRECISION, BLOCK_K)


@triton.jit
def _row_product_tile(a_ptr, a_stride, m_ptr, m_stride_k, m_stride_n, KA, gy_ptr, ghn_ptr, h0_ptr,
                      out_ptr, hn_ptr, len_ptr, t, T, B, N, offs_b, offs_n, n_end, first,
                      ADD_GRAD: tl.constexpr, WRITE_FINAL: tl.constexpr, HAS_LEN: tl.constexpr,
                      ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    DT = out_ptr.dtype.element_ty
    mask = (offs_b[:, None] < B) & (offs_n[None, :] < n_end)
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)
    active = (t < L)[:, None]
    last = (t == L - 1)[:, None]
    acc = tl.zeros([offs_b.shape[0], offs_n.shape[0]], dtype=ACC)
    acc = _rows_times(acc, a_ptr, a_stride, m_ptr, m_stride_k, m_stride_n, offs_b, offs_n,
                      B, n_end, KA, PRECISION, BLOCK_K)
    idx = offs_b[:, None] * N + offs_n[None, :]
    if ADD_GRAD:
        acc += tl.load(gy_ptr + idx, mask=mask, other=0.0).to(ACC)
        acc += tl.load(ghn_ptr + idx, mask=mask & last, other=0.0).to(ACC)
    out = acc.to(DT)
    tl.store(out_ptr + idx, tl.where(active, out, 0.0).to(DT), mask=mask)
    if WRITE_FINAL:
        tl.store(hn_ptr + idx, out, mask=mask & last)
        if first:
            empty = mask & (L == 0)[:, None]
            tl.store(hn_ptr + idx, tl.load(h0_ptr + idx, mask=empty, other=0.0), mask=empty)


@triton.jit(do_not_specialize=["t"])
def row_product_kernel(
        a_ptr, a_stride, m_ptr, m_stride_k, m_stride_n, KA,
        gy_ptr,    # [B, N] added if ADD_GRAD (grad of the output at step t)
        ghn_ptr,   # [B, N] added at each row's last step if ADD_GRAD (grad_h_n)
        h0_ptr,    # [B, N] copied to h_n for rows of length 0 if WRITE_FINAL
        out_ptr,   # [B, N]: zero for inactive rows
        hn_ptr,    # [B, N]: written at each row's last step if WRITE_FINAL
        len_ptr, t, T, B, N,
        ADD_GRAD: tl.constexpr, WRITE_FINAL: tl.constexpr, FIRST: tl.constexpr,
        HAS_LEN: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out = A @ M (+ the output gradients), zero for rows inactive at step t.
    Forward with a projection: y_t = proj_in_t @ W_hr^T (and h_n).
    Backward with a projection: d_proj_t = d_gates_{t+1} @ W_hh + grad_y_t
    (+ grad_h_n at the last step)."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    _row_product_tile(a_ptr, a_stride, m_ptr, m_stride_k, m_stride_n, KA, gy_ptr, ghn_ptr, h0_ptr,
                      out_ptr, hn_ptr, len_ptr, t, T, B, N, offs_b, offs_n, N, FIRST,
                      ADD_GRAD, WRITE_FINAL, HAS_LEN, ACC, PRECISION, BLOCK_K)


@triton.jit
def _lstm_bwd_tile(a_ptr, a_stride, m_ptr, m_stride_k, m_stride_n, wt_i, wt_f, wt_g, wt_o, KA, gy_ptr, ghn_ptr,
                   ws_ptr,
                   ws_prev_ptr, c0_ptr, gws_ptr, dc_ptr, dg_ptr, len_ptr, t, T, B, H,
                   offs_b, offs_n, n_end, first,
                   ADD_GRAD: tl.constexpr, HAS_LEN: tl.constexpr, HAS_GWS: tl.constexpr,
                   RESIDENT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    ACC = ws_ptr.dtype.element_ty
    DT = dg_ptr.dtype.element_ty
    mask = (offs_b[:, None] < B) & (offs_n[None, :] < n_end)
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)
    active = (t < L)[:, None]
    dh = tl.zeros([offs_b.shape[0], offs_n.shape[0]], dtype=ACC)
    if RESIDENT:
        # One gate's rows of W_hh at a time (wt_*: [pad(H), BLOCK_N] each):
        # the A operand one gate wide, not 4H -- a product with one
        # [pad(4H), BLOCK_N] tile spilled in fp16 on sm_90 (H = 127).
        # KA is 4H or 0 (no step after the last).
        kg = tl.minimum(KA, H)
        dh = _times(dh, a_ptr, a_stride, m_ptr, m_stride_k, m_stride_n, wt_i, offs_b, offs_n,
                    B, n_end, kg, RESIDENT, PRECISION, BLOCK_K)
        dh = _times(dh, a_ptr + H, a_stride, m_ptr, m_stride_k, m_stride_n, wt_f, offs_b, offs_n,
                    B, n_end, kg, RESIDENT, PRECISION, BLOCK_K)
        dh = _times(dh, a_ptr + 2 * H, a_stride, m_ptr, m_stride_k, m_stride_n, wt_g, offs_b, offs_n,
                    B, n_end, kg, RESIDENT, PRECISION, BLOCK_K)
        dh = _times(dh, a_ptr + 3 * H, a_stride, m_ptr, m_stride_k, m_stride_n, wt_o, offs_b, offs_n,
                    B, n_end, kg, RESIDENT, PRECISION, BLOCK_K)
    else:
        dh = _times(dh, a_ptr, a_stride, m_ptr, m_stride_k, m_stride_n, m_ptr, offs_b, offs_n,
                    B, n_end, KA, RESIDENT, PRECISION, BLOCK_K)
    state = offs_b[:, None] * H + offs_n[None, :]
    if ADD_GRAD:
        dh += tl.load(gy_ptr + state, mask=mask, other=0.0).to(ACC)
        dh += tl.load(ghn_ptr + state, mask=mask & (t == L - 1)[:, None], other=0.0).to(ACC)

    ws = ws_ptr + offs_b[:, None] * (5 * H) + offs_n[None, :]
    i = tl.load(ws, mask=mask, other=0.0)
    f = tl.load(ws + H, mask=mask, other=0.0)
    g = tl.load(ws + 2 * H, mask=mask, other=0.0)
    o = tl.load(ws + 3 * H, mask=mask, other=0.0)
    c = tl.load(ws + 4 * H, mask=mask, other=0.0)
    if first:
        c_prev = tl.load(c0_ptr + state, mask=mask, other=0.0).to(ACC)
    else:
        c_prev = tl.load(ws_prev_ptr + offs_b[:, None] * (5 * H) + 4 * H + offs_n[None, :],
                         mask=mask, other=0.0)
    tc = _tanh(c)
    dc = tl.load(dc_ptr + state, mask=mask, other=0.0) + dh * o * (1.0 - tc * tc)
    do = dh * tc
    if HAS_GWS:
        gw = gws_ptr + offs_b[:, None] * (5 * H) + offs_n[None, :]
        dc += tl.load(gw + 4 * H, mask=mask, other=0.0)
        di = dc * g + tl.load(gw, mask=mask, other=0.0)
        df = dc * c_prev + tl.load(gw + H, mask=mask, other=0.0)
        dgg = dc * i + tl.load(gw + 2 * H, mask=mask, other=0.0)
        do += tl.load(gw + 3 * H, mask=mask, other=0.0)
    else:
        di = dc * g
        df = dc * c_prev
        dgg = dc * i
    dg = dg_ptr + offs_b[:, None] * (4 * H) + offs_n[None, :]
    tl.store(dg, tl.where(active, di * i * (1.0 - i), 0.0).to(DT), mask=mask)
    tl.store(dg + H, tl.where(active, df * f * (1.0 - f), 0.0).to(DT), mask=mask)
    tl.store(dg + 2 * H, tl.where(active, dgg * (1.0 - g * g), 0.0).to(DT), mask=mask)
    tl.store(dg + 3 * H, tl.where(active, do * o * (1.0 - o), 0.0).to(DT), mask=mask)
    tl.store(dc_ptr + state, dc * f, mask=mask & active)


@triton.jit(do_not_specialize=["t"])
def lstm_bwd_step_kernel(
        a_ptr, a_stride, m_ptr, m_stride_k, m_stride_n, KA,  # dh = A @ M: see below
        gy_ptr,       # grad of the output at step t [B, H] (if ADD_GRAD)
        ghn_ptr,      # grad_h_n [B, H] (if ADD_GRAD)
        ws_ptr,       # workspace of step t [B, 5H]
        ws_prev_ptr,  # workspace of step t-1 (unless FIRST)
        c0_ptr,       # [B, H] (if FIRST)
        gws_ptr,      # grad of the workspace at step t [B, 5H] (if HAS_GWS)
        dc_ptr,       # [B, H] carried gradient of c (accumulation type), updated
        dg_ptr,       # out: gradient of the gate pre-activations at step t [B, 4H]
        len_ptr, t, T, B, H,
        ADD_GRAD: tl.constexpr, HAS_LEN: tl.constexpr, HAS_GWS: tl.constexpr,
        FIRST: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One backward step.  The gradient of h_t is the product A @ M in the
    same kernel: d_gates_{t+1} @ W_hh (+ grad_y_t, + grad_h_n at the row's
    last step) without a projection, d_proj_t @ W_hr with one."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    _lstm_bwd_tile(a_ptr, a_stride, m_ptr, m_stride_k, m_stride_n, m_ptr, m_ptr, m_ptr, m_ptr, KA, gy_ptr,
                   ghn_ptr, ws_ptr,
                   ws_prev_ptr, c0_ptr, gws_ptr, dc_ptr, dg_ptr, len_ptr, t, T, B, H,
                   offs_b, offs_n, H, FIRST, ADD_GRAD, HAS_LEN, HAS_GWS, False, PRECISION, BLOCK_K)


# -------------------------------------------------- step strategy: GRU ----
@triton.jit
def _gru_fwd_tile(gx_ptr, hprev_ptr, w_ptr, wt_r, wt_z, wt_n, b_ptr, ws_ptr, y_ptr, hn_ptr, len_ptr,
                  t, T, B, H, offs_b, offs_n, n_end, first,
                  HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, RESIDENT: tl.constexpr,
                  PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    ACC = ws_ptr.dtype.element_ty
    DT = y_ptr.dtype.element_ty
    nm = offs_n < n_end
    mask = (offs_b[:, None] < B) & nm[None, :]
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)
    active = (t < L)[:, None]
    zero = tl.zeros([offs_b.shape[0], offs_n.shape[0]], dtype=ACC)
    hh_r = _times(zero, hprev_ptr, H, w_ptr, 1, H, wt_r, offs_b, offs_n, B, n_end, H,
                  RESIDENT, PRECISION, BLOCK_K)
    hh_z = _times(zero, hprev_ptr, H, w_ptr + H * H, 1, H, wt_z, offs_b, offs_n, B, n_end, H,
                  RESIDENT, PRECISION, BLOCK_K)
    hh_n = _times(zero, hprev_ptr, H, w_ptr + 2 * H * H, 1, H, wt_n, offs_b, offs_n, B, n_end, H,
                  RESIDENT, PRECISION, BLOCK_K)
    if HAS_BIAS:
        hh_r += tl.load(b_ptr + offs_n, mask=nm, other=0.0).to(ACC)[None, :]
        hh_z += tl.load(b_ptr + H + offs_n, mask=nm, other=0.0).to(ACC)[None, :]
        hh_n += tl.load(b_ptr + 2 * H + offs_n, mask=nm, other=0.0).to(ACC)[None, :]
    gx = gx_ptr + offs_b[:, None] * (3 * H) + offs_n[None, :]
    r = _sigmoid(tl.load(gx, mask=mask, other=0.0).to(ACC) + hh_r)
    z = _sigmoid(tl.load(gx + H, mask=mask, other=0.0).to(ACC) + hh_z)
    n = _tanh(tl.load(gx + 2 * H, mask=mask, other=0.0).to(ACC) + r * hh_n)
    state = offs_b[:, None] * H + offs_n[None, :]
    h_prev = tl.load(hprev_ptr + state, mask=mask, other=0.0)
    h = ((1.0 - z) * n + z * h_prev.to(ACC)).to(DT)

    ws = ws_ptr + offs_b[:, None] * (4 * H) + offs_n[None, :]
    tl.store(ws, tl.where(active, r, 0.0), mask=mask)
    tl.store(ws + H, tl.where(active, z, 0.0), mask=mask)
    tl.store(ws + 2 * H, tl.where(active, n, 0.0), mask=mask)
    tl.store(ws + 3 * H, tl.where(active, hh_n, 0.0), mask=mask)
    tl.store(y_ptr + state, tl.where(active, h, 0.0).to(DT), mask=mask)
    tl.store(hn_ptr + state, h, mask=mask & (t == L - 1)[:, None])
    if first:
        tl.store(hn_ptr + state, h_prev, mask=mask & (L == 0)[:, None])


@triton.jit(do_not_specialize=["t"])
def gru_fwd_step_kernel(
        gx_ptr,     # [B, 3H]
        hprev_ptr,  # [B, H]: h0 at t = 0, else output of step t-1
        w_ptr,      # W_hh [3H, H]
        b_ptr,      # b_hh [3H] (if HAS_BIAS)
        ws_ptr,     # [B, 4H]
        y_ptr,      # [B, H]
        hn_ptr, len_ptr, t, T, B, H,
        HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, FIRST: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    _gru_fwd_tile(gx_ptr, hprev_ptr, w_ptr, w_ptr, w_ptr, w_ptr, b_ptr, ws_ptr, y_ptr, hn_ptr, len_ptr,
                  t, T, B, H, offs_b, offs_n, H, FIRST, HAS_BIAS, HAS_LEN, False, PRECISION, BLOCK_K)


@triton.jit
def _gru_bwd_tile(dhh_next_ptr, KA, w_ptr, wt_r, wt_z, wt_n, gy_ptr, hprev_ptr, ws_ptr, gws_ptr, carry_ptr, dg_ptr,
                  dhh_ptr, len_ptr, t, T, B, H, offs_b, offs_n, n_end,
                  HAS_LEN: tl.constexpr, HAS_GWS: tl.constexpr, RESIDENT: tl.constexpr,
                  PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    ACC = ws_ptr.dtype.element_ty
    DT = dg_ptr.dtype.element_ty
    mask = (offs_b[:, None] < B) & (offs_n[None, :] < n_end)
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)
    active = (t < L)[:, None]
    state = offs_b[:, None] * H + offs_n[None, :]
    dh = tl.load(carry_ptr + state, mask=mask, other=0.0)
    if RESIDENT:
        # One gate's rows at a time, as in _lstm_bwd_tile; KA is 3H or 0.
        kg = tl.minimum(KA, H)
        dh = _times(dh, dhh_next_ptr, 3 * H, w_ptr, H, 1, wt_r, offs_b, offs_n, B, n_end, kg,
                    RESIDENT, PRECISION, BLOCK_K)
        dh = _times(dh, dhh_next_ptr + H, 3 * H, w_ptr, H, 1, wt_z, offs_b, offs_n, B, n_end, kg,
                    RESIDENT, PRECISION, BLOCK_K)
        dh = _times(dh, dhh_next_ptr + 2 * H, 3 * H, w_ptr, H, 1, wt_n, offs_b, offs_n, B, n_end, kg,
                    RESIDENT, PRECISION, BLOCK_K)
    else:
        dh = _times(dh, dhh_next_ptr, 3 * H, w_ptr, H, 1, w_ptr, offs_b, offs_n, B, n_end, KA,
                    RESIDENT, PRECISION, BLOCK_K)
    dh += tl.load(gy_ptr + state, mask=mask, other=0.0).to(ACC)

    ws = ws_ptr + offs_b[:, None] * (4 * H) + offs_n[None, :]
    r = tl.load(ws, mask=mask, other=0.0)
    z = tl.load(ws + H, mask=mask, other=0.0)
    n = tl.load(ws + 2 * H, mask=mask, other=0.0)
    hn = tl.load(ws + 3 * H, mask=mask, other=0.0)
    h_prev = tl.load(hprev_ptr + state, mask=mask, other=0.0).to(ACC)
    dn = dh * (1.0 - z)
    dz = dh * (h_prev - n)
    if HAS_GWS:
        gw = gws_ptr + offs_b[:, None] * (4 * H) + offs_n[None, :]
        dn += tl.load(gw + 2 * H, mask=mask, other=0.0)
        dz += tl.load(gw + H, mask=mask, other=0.0)
    d_xn = dn * (1.0 - n * n)
    dr = d_xn * hn
    d_hn = d_xn * r
    if HAS_GWS:
        dr += tl.load(gw, mask=mask, other=0.0)
        d_hn += tl.load(gw + 3 * H, mask=mask, other=0.0)
    d_r = tl.where(active, dr * r * (1.0 - r), 0.0).to(DT)
    d_z = tl.where(active, dz * z * (1.0 - z), 0.0).to(DT)
    dg = dg_ptr + offs_b[:, None] * (3 * H) + offs_n[None, :]
    tl.store(dg, d_r, mask=mask)
    tl.store(dg + H, d_z, mask=mask)
    tl.store(dg + 2 * H, tl.where(active, d_xn, 0.0).to(DT), mask=mask)
    dhh = dhh_ptr + offs_b[:, None] * (3 * H) + offs_n[None, :]
    tl.store(dhh, d_r, mask=mask)
    tl.store(dhh + H, d_z, mask=mask)
    tl.store(dhh + 2 * H, tl.where(active, d_hn, 0.0).to(DT), mask=mask)
    tl.store(carry_ptr + state, dh * z, mask=mask & active)


@triton.jit(do_not_specialize=["t"])
def gru_bwd_step_kernel(
        dhh_next_ptr, KA,  # d_hh of step t+1 [B, 3H]; KA = 3H, or 0 at the last step
        w_ptr,        # W_hh [3H, H]
        gy_ptr,       # grad of the output at step t [B, H]
        hprev_ptr,    # [B, H]: h0 at t = 0, else output of step t-1
        ws_ptr,       # [B, 4H]
        gws_ptr,      # [B, 4H] (if HAS_GWS)
        carry_ptr,    # [B, H] (accumulation type): gradient reaching h_t directly
                      # (dh_{t+1} * z_{t+1}, or grad_h_n before a row's last step)
        dg_ptr,       # out: gradient of the input gates [B, 3H]
        dhh_ptr,      # out: gradient of h W_hh^T + b_hh [B, 3H]
        len_ptr, t, T, B, H,
        HAS_LEN: tl.constexpr, HAS_GWS: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    _gru_bwd_tile(dhh_next_ptr, KA, w_ptr, w_ptr, w_ptr, w_ptr, gy_ptr, hprev_ptr, ws_ptr, gws_ptr, carry_ptr, dg_ptr,
                  dhh_ptr, len_ptr, t, T, B, H, offs_b, offs_n, H, HAS_LEN, HAS_GWS, False, PRECISION, BLOCK_K)

# ------------------------------------------- persistent strategy: LSTM ----
@triton.jit
def lstm_fwd_persistent_kernel(
        gx_ptr,   # [T, B, 4H]
        w_ptr,    # W_hh [4H, K]
        b_ptr,    # [4H] (if HAS_BIAS)
        wr_ptr,   # W_hr [K, H] (if PROJ; then K = P)
        h0_ptr, c0_ptr, len_ptr,
        ws_ptr,   # [T, B, 5H]
        y_ptr,    # [T, B, K]
        pin_ptr,  # [T, B, H] projection input (if PROJ)
        hn_ptr, cn_ptr,
        T, B, H, K,
        HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, PROJ: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    ACC = ws_ptr.dtype.element_ty
    DT = y_ptr.dtype.element_ty
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_b[:, None] < B
    mask_h = rows & (offs_h[None, :] < H)
    mask_k = rows & (offs_k[None, :] < K)
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)

    # W_g^T tiles [BLOCK_K, BLOCK_H], loaded once: (k, j) = W_hh[g*H + j, k].
    wmask = (offs_k[:, None] < K) & (offs_h[None, :] < H)
    wt = w_ptr + offs_h[None, :] * K + offs_k[:, None]
    w_i = tl.load(wt, mask=wmask, other=0.0)
    w_f = tl.load(wt + H * K, mask=wmask, other=0.0)
    w_g = tl.load(wt + 2 * H * K, mask=wmask, other=0.0)
    w_o = tl.load(wt + 3 * H * K, mask=wmask, other=0.0)
    if HAS_BIAS:
        hm = offs_h < H
        b_i = tl.load(b_ptr + offs_h, mask=hm, other=0.0).to(ACC)[None, :]
        b_f = tl.load(b_ptr + H + offs_h, mask=hm, other=0.0).to(ACC)[None, :]
        b_g = tl.load(b_ptr + 2 * H + offs_h, mask=hm, other=0.0).to(ACC)[None, :]
        b_o = tl.load(b_ptr + 3 * H + offs_h, mask=hm, other=0.0).to(ACC)[None, :]
    if PROJ:
        # W_hr^T [BLOCK_H, BLOCK_K]: (j, p) = W_hr[p, j].
        wr = tl.load(wr_ptr + offs_k[None, :] * H + offs_h[:, None],
                     mask=(offs_h[:, None] < H) & (offs_k[None, :] < K), other=0.0)

    idx_h = offs_b[:, None] * H + offs_h[None, :]
    idx_k = offs_b[:, None] * K + offs_k[None, :]
    h = tl.load(h0_ptr + idx_k, mask=mask_k, other=0.0)
    c = tl.load(c0_ptr + idx_h, mask=mask_h, other=0.0).to(ACC)
    zero_h = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    for t in range(0, T):
        active = (t < L)[:, None]
        step = tl.cast(t, tl.int64) * B
        gx = gx_ptr + step * (4 * H) + offs_b[:, None] * (4 * H) + offs_h[None, :]
        pre_i = tl.dot(h, w_i, zero_h, input_precision=PRECISION, out_dtype=ACC) + tl.load(gx, mask=mask_h, other=0.0).to(ACC)
        pre_f = tl.dot(h, w_f, zero_h, input_precision=PRECISION, out_dtype=ACC) + tl.load(gx + H, mask=mask_h, other=0.0).to(ACC)
        pre_g = tl.dot(h, w_g, zero_h, input_precision=PRECISION, out_dtype=ACC) + tl.load(gx + 2 * H, mask=mask_h, other=0.0).to(ACC)
        pre_o = tl.dot(h, w_o, zero_h, input_precision=PRECISION, out_dtype=ACC) + tl.load(gx + 3 * H, mask=mask_h, other=0.0).to(ACC)
        if HAS_BIAS:
            pre_i += b_i
            pre_f += b_f
            pre_g += b_g
            pre_o += b_o
        i = _sigmoid(pre_i)
        f = _sigmoid(pre_f)
        g = _tanh(pre_g)
        o = _sigmoid(pre_o)
        c_new = f * c + i * g
        h_raw = (o * _tanh(c_new)).to(DT)
        ws = ws_ptr + step * (5 * H) + offs_b[:, None] * (5 * H) + offs_h[None, :]
        tl.store(ws, tl.where(active, i, 0.0), mask=mask_h)
        tl.store(ws + H, tl.where(active, f, 0.0), mask=mask_h)
        tl.store(ws + 2 * H, tl.where(active, g, 0.0), mask=mask_h)
        tl.store(ws + 3 * H, tl.where(active, o, 0.0), mask=mask_h)
        tl.store(ws + 4 * H, tl.where(active, c_new, 0.0), mask=mask_h)
        if PROJ:
            tl.store(pin_ptr + step * H + idx_h, tl.where(active, h_raw, 0.0).to(DT), mask=mask_h)
            h_new = tl.dot(h_raw, wr, tl.zeros([BLOCK_B, BLOCK_K], dtype=ACC),
                           input_precision=PRECISION, out_dtype=ACC).to(DT)
        else:
            h_new = h_raw
        tl.store(y_ptr + step * K + idx_k, tl.where(active, h_new, 0.0).to(DT), mask=mask_k)
        h = tl.where(active, h_new, h)
        c = tl.where(active, c_new, c)
    tl.store(hn_ptr + idx_k, h, mask=mask_k)
    tl.store(cn_ptr + idx_h, c.to(DT), mask=mask_h)


@triton.jit
def lstm_bwd_persistent_kernel(
        gy_ptr,    # [T, B, K]
        ghn_ptr,   # [B, K]
        gcn_ptr,   # [B, H]
        w_ptr,     # W_hh [4H, K]
        wr_ptr,    # W_hr [K, H] (if PROJ)
        c0_ptr,    # [B, H]
        ws_ptr,    # [T, B, 5H]
        gws_ptr,   # [T, B, 5H] (if HAS_GWS)
        len_ptr,
        dg_ptr,    # out [T, B, 4H]
        dproj_ptr,  # out [T, B, K] (if PROJ)
        dh0_ptr,   # out [B, K]
        dc0_ptr,   # out [B, H]
        T, B, H, K,
        HAS_LEN: tl.constexpr, HAS_GWS: tl.constexpr, PROJ: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    ACC = ws_ptr.dtype.element_ty
    DT = dg_ptr.dtype.element_ty
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_b[:, None] < B
    mask_h = rows & (offs_h[None, :] < H)
    mask_k = rows & (offs_k[None, :] < K)
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)

    # W_g tiles [BLOCK_H, BLOCK_K]: (j, k) = W_hh[g*H + j, k].
    wmask = (offs_h[:, None] < H) & (offs_k[None, :] < K)
    wp = w_ptr + offs_h[:, None] * K + offs_k[None, :]
    w_i = tl.load(wp, mask=wmask, other=0.0)
    w_f = tl.load(wp + H * K, mask=wmask, other=0.0)
    w_g = tl.load(wp + 2 * H * K, mask=wmask, other=0.0)
    w_o = tl.load(wp + 3 * H * K, mask=wmask, other=0.0)
    if PROJ:
        # W_hr [BLOCK_K, BLOCK_H]: (p, j) = W_hr[p, j].
        wr = tl.load(wr_ptr + offs_k[:, None] * H + offs_h[None, :],
                     mask=(offs_k[:, None] < K) & (offs_h[None, :] < H), other=0.0)

    idx_h = offs_b[:, None] * H + offs_h[None, :]
    idx_k = offs_b[:, None] * K + offs_k[None, :]
    ghn = tl.load(ghn_ptr + idx_k, mask=mask_k, other=0.0).to(ACC)
    dc = tl.load(gcn_ptr + idx_h, mask=mask_h, other=0.0).to(ACC)
    zero_k = tl.zeros([BLOCK_B, BLOCK_K], dtype=ACC)
    # Gradients of the gate pre-activations of step t+1, in the storage type
    # (as the step strategy reads them back from memory).
    dg_i = tl.zeros([BLOCK_B, BLOCK_H], dtype=DT)
    dg_f = tl.zeros([BLOCK_B, BLOCK_H], dtype=DT)
    dg_g = tl.zeros([BLOCK_B, BLOCK_H], dtype=DT)
    dg_o = tl.zeros([BLOCK_B, BLOCK_H], dtype=DT)
    for s in range(0, T):
        t = T - 1 - s
        active = (t < L)[:, None]
        last = (t == L - 1)[:, None]
        step = tl.cast(t, tl.int64) * B
        dy = tl.dot(dg_i, w_i, zero_k, input_precision=PRECISION, out_dtype=ACC)
        dy = tl.dot(dg_f, w_f, dy, input_precision=PRECISION, out_dtype=ACC)
        dy = tl.dot(dg_g, w_g, dy, input_precision=PRECISION, out_dtype=ACC)
        dy = tl.dot(dg_o, w_o, dy, input_precision=PRECISION, out_dtype=ACC)
        dy += tl.load(gy_ptr + step * K + idx_k, mask=mask_k, other=0.0).to(ACC)
        dy += tl.where(last, ghn, 0.0)
        if PROJ:
            dp = tl.where(active, dy, 0.0).to(DT)
            tl.store(dproj_ptr + step * K + idx_k, dp, mask=mask_k)
            dh = tl.dot(dp, wr, tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC), input_precision=PRECISION, out_dtype=ACC)
        else:
            dh = dy
        ws = ws_ptr + step * (5 * H) + offs_b[:, None] * (5 * H) + offs_h[None, :]
        i = tl.load(ws, mask=mask_h, other=0.0)
        f = tl.load(ws + H, mask=mask_h, other=0.0)
        g = tl.load(ws + 2 * H, mask=mask_h, other=0.0)
        o = tl.load(ws + 3 * H, mask=mask_h, other=0.0)
        c = tl.load(ws + 4 * H, mask=mask_h, other=0.0)
        # c_{t-1}: the previous step's workspace, or c0 at t = 0 (the address
        # of "step -1" is clamped to stay inside the buffer).
        prev = tl.cast(tl.maximum(t - 1, 0), tl.int64) * B
        c_ws = tl.load(ws_ptr + prev * (5 * H) + offs_b[:, None] * (5 * H) + 4 * H + offs_h[None, :],
                       mask=mask_h & (t > 0), other=0.0)
        c_init = tl.load(c0_ptr + idx_h, mask=mask_h & (t == 0), other=0.0).to(ACC)
        c_prev = tl.where(t > 0, c_ws, c_init)
        tc = _tanh(c)
        dcs = dc + dh * o * (1.0 - tc * tc)
        d_o = dh * tc
        if HAS_GWS:
            gw = gws_ptr + step * (5 * H) + offs_b[:, None] * (5 * H) + offs_h[None, :]
            dcs += tl.load(gw + 4 * H, mask=mask_h, other=0.0)
            di = dcs * g + tl.load(gw, mask=mask_h, other=0.0)
            df = dcs * c_prev + tl.load(gw + H, mask=mask_h, other=0.0)
            dgg = dcs * i + tl.load(gw + 2 * H, mask=mask_h, other=0.0)
            d_o += tl.load(gw + 3 * H, mask=mask_h, other=0.0)
        else:
            di = dcs * g
            df = dcs * c_prev
            dgg = dcs * i
        dg_i = tl.where(active, di * i * (1.0 - i), 0.0).to(DT)
        dg_f = tl.where(active, df * f * (1.0 - f), 0.0).to(DT)
        dg_g = tl.where(active, dgg * (1.0 - g * g), 0.0).to(DT)
        dg_o = tl.where(active, d_o * o * (1.0 - o), 0.0).to(DT)
        dg = dg_ptr + step * (4 * H) + offs_b[:, None] * (4 * H) + offs_h[None, :]
        tl.store(dg, dg_i, mask=mask_h)
        tl.store(dg + H, dg_f, mask=mask_h)
        tl.store(dg + 2 * H, dg_g, mask=mask_h)
        tl.store(dg + 3 * H, dg_o, mask=mask_h)
        dc = tl.where(active, dcs * f, dc)
    dh0 = tl.dot(dg_i, w_i, zero_k, input_precision=PRECISION, out_dtype=ACC)
    dh0 = tl.dot(dg_f, w_f, dh0, input_precision=PRECISION, out_dtype=ACC)
    dh0 = tl.dot(dg_g, w_g, dh0, input_precision=PRECISION, out_dtype=ACC)
    dh0 = tl.dot(dg_o, w_o, dh0, input_precision=PRECISION, out_dtype=ACC)
    dh0 += tl.where((L == 0)[:, None], ghn, 0.0)
    tl.store(dh0_ptr + idx_k, dh0.to(DT), mask=mask_k)
    tl.store(dc0_ptr + idx_h, dc.to(DT), mask=mask_h)


# -------------------------------------------- persistent strategy: GRU ----
@triton.jit
def gru_fwd_persistent_kernel(
        gx_ptr,  # [T, B, 3H]
        w_ptr,   # W_hh [3H, H]
        b_ptr,   # [3H] (if HAS_BIAS)
        h0_ptr, len_ptr,
        ws_ptr,  # [T, B, 4H]
        y_ptr,   # [T, B, H]
        hn_ptr,
        T, B, H,
        HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    ACC = ws_ptr.dtype.element_ty
    DT = y_ptr.dtype.element_ty
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)
    # W_g^T tiles [BLOCK_H (k), BLOCK_H (j)]: (k, j) = W_hh[g*H + j, k].
    wmask = (offs_h[:, None] < H) & (offs_h[None, :] < H)
    wt = w_ptr + offs_h[None, :] * H + offs_h[:, None]
    w_r = tl.load(wt, mask=wmask, other=0.0)
    w_z = tl.load(wt + H * H, mask=wmask, other=0.0)
    w_n = tl.load(wt + 2 * H * H, mask=wmask, other=0.0)
    zero = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    b_r = zero
    b_z = zero
    b_n = zero
    if HAS_BIAS:
        hm = offs_h < H
        b_r += tl.load(b_ptr + offs_h, mask=hm, other=0.0).to(ACC)[None, :]
        b_z += tl.load(b_ptr + H + offs_h, mask=hm, other=0.0).to(ACC)[None, :]
        b_n += tl.load(b_ptr + 2 * H + offs_h, mask=hm, other=0.0).to(ACC)[None, :]
    idx = offs_b[:, None] * H + offs_h[None, :]
    h = tl.load(h0_ptr + idx, mask=mask, other=0.0)
    for t in range(0, T):
        active = (t < L)[:, None]
        step = tl.cast(t, tl.int64) * B
        hh_r = tl.dot(h, w_r, b_r, input_precision=PRECISION, out_dtype=ACC)
        hh_z = tl.dot(h, w_z, b_z, input_precision=PRECISION, out_dtype=ACC)
        hh_n = tl.dot(h, w_n, b_n, input_precision=PRECISION, out_dtype=ACC)
        gx = gx_ptr + step * (3 * H) + offs_b[:, None] * (3 * H) + offs_h[None, :]
        r = _sigmoid(tl.load(gx, mask=mask, other=0.0).to(ACC) + hh_r)
        z = _sigmoid(tl.load(gx + H, mask=mask, other=0.0).to(ACC) + hh_z)
        n = _tanh(tl.load(gx + 2 * H, mask=mask, other=0.0).to(ACC) + r * hh_n)
        h_new = ((1.0 - z) * n + z * h.to(ACC)).to(DT)
        ws = ws_ptr + step * (4 * H) + offs_b[:, None] * (4 * H) + offs_h[None, :]
        tl.store(ws, tl.where(active, r, 0.0), mask=mask)
        tl.store(ws + H, tl.where(active, z, 0.0), mask=mask)
        tl.store(ws + 2 * H, tl.where(active, n, 0.0), mask=mask)
        tl.store(ws + 3 * H, tl.where(active, hh_n, 0.0), mask=mask)
        tl.store(y_ptr + step * H + idx, tl.where(active, h_new, 0.0).to(DT), mask=mask)
        h = tl.where(active, h_new, h)
    tl.store(hn_ptr + idx, h, mask=mask)


@triton.jit
def gru_bwd_persistent_kernel(
        gy_ptr,   # [T, B, H]
        ghn_ptr,  # [B, H]
        w_ptr,    # W_hh [3H, H]
        h0_ptr,   # [B, H]
        y_ptr,    # [T, B, H] forward output
        ws_ptr,   # [T, B, 4H]
        gws_ptr,  # [T, B, 4H] (if HAS_GWS)
        len_ptr,
        dg_ptr,   # out [T, B, 3H]
        dhh_ptr,  # out [T, B, 3H]
        dh0_ptr,  # out [B, H]
        T, B, H,
        HAS_LEN: tl.constexpr, HAS_GWS: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    ACC = ws_ptr.dtype.element_ty
    DT = dg_ptr.dtype.element_ty
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)
    # W_g tiles [BLOCK_H (j), BLOCK_H (k)]: (j, k) = W_hh[g*H + j, k].
    wmask = (offs_h[:, None] < H) & (offs_h[None, :] < H)
    wp = w_ptr + offs_h[:, None] * H + offs_h[None, :]
    w_r = tl.load(wp, mask=wmask, other=0.0)
    w_z = tl.load(wp + H * H, mask=wmask, other=0.0)
    w_n = tl.load(wp + 2 * H * H, mask=wmask, other=0.0)
    idx = offs_b[:, None] * H + offs_h[None, :]
    carry = tl.load(ghn_ptr + idx, mask=mask, other=0.0).to(ACC)
    d_r = tl.zeros([BLOCK_B, BLOCK_H], dtype=DT)
    d_z = tl.zeros([BLOCK_B, BLOCK_H], dtype=DT)
    d_hn = tl.zeros([BLOCK_B, BLOCK_H], dtype=DT)
    for s in range(0, T):
        t = T - 1 - s
        active = (t < L)[:, None]
        step = tl.cast(t, tl.int64) * B
        dh = tl.dot(d_r, w_r, carry, input_precision=PRECISION, out_dtype=ACC)
        dh = tl.dot(d_z, w_z, dh, input_precision=PRECISION, out_dtype=ACC)
        dh = tl.dot(d_hn, w_n, dh, input_precision=PRECISION, out_dtype=ACC)
        dh += tl.load(gy_ptr + step * H + idx, mask=mask, other=0.0).to(ACC)
        ws = ws_ptr + step * (4 * H) + offs_b[:, None] * (4 * H) + offs_h[None, :]
        r = tl.load(ws, mask=mask, other=0.0)
        z = tl.load(ws + H, mask=mask, other=0.0)
        n = tl.load(ws + 2 * H, mask=mask, other=0.0)
        hn = tl.load(ws + 3 * H, mask=mask, other=0.0)
        prev = tl.cast(tl.maximum(t - 1, 0), tl.int64) * B
        h_y = tl.load(y_ptr + prev * H + idx, mask=mask & (t > 0), other=0.0)
        h_init = tl.load(h0_ptr + idx, mask=mask & (t == 0), other=0.0)
        h_prev = tl.where(t > 0, h_y, h_init).to(ACC)
        dn = dh * (1.0 - z)
        dz = dh * (h_prev - n)
        if HAS_GWS:
            gw = gws_ptr + step * (4 * H) + offs_b[:, None] * (4 * H) + offs_h[None, :]
            dn += tl.load(gw + 2 * H, mask=mask, other=0.0)
            dz += tl.load(gw + H, mask=mask, other=0.0)
        d_xn = dn * (1.0 - n * n)
        dr = d_xn * hn
        dhn = d_xn * r
        if HAS_GWS:
            dr += tl.load(gw, mask=mask, other=0.0)
            dhn += tl.load(gw + 3 * H, mask=mask, other=0.0)
        d_r = tl.where(active, dr * r * (1.0 - r), 0.0).to(DT)
        d_z = tl.where(active, dz * z * (1.0 - z), 0.0).to(DT)
        d_hn = tl.where(active, dhn, 0.0).to(DT)
        dg = dg_ptr + step * (3 * H) + offs_b[:, None] * (3 * H) + offs_h[None, :]
        tl.store(dg, d_r, mask=mask)
        tl.store(dg + H, d_z, mask=mask)
        tl.store(dg + 2 * H, tl.where(active, d_xn, 0.0).to(DT), mask=mask)
        dhh = dhh_ptr + step * (3 * H) + offs_b[:, None] * (3 * H) + offs_h[None, :]
        tl.store(dhh, d_r, mask=mask)
        tl.store(dhh + H, d_z, mask=mask)
        tl.store(dhh + 2 * H, d_hn, mask=mask)
        carry = tl.where(active, dh * z, carry)
    dh0 = tl.dot(d_r, w_r, carry, input_precision=PRECISION, out_dtype=ACC)
    dh0 = tl.dot(d_z, w_z, dh0, input_precision=PRECISION, out_dtype=ACC)
    dh0 = tl.dot(d_hn, w_n, dh0, input_precision=PRECISION, out_dtype=ACC)
    tl.store(dh0_ptr + idx, dh0.to(DT), mask=mask)


# ------------------------------------------------------ grid strategy ----
# One launch per layer direction runs the whole sequence on K programs (the
# partition of csrc/include/rnn_ext/partition.h): program k owns the hidden
# units [units[k, 0], units[k, 1]) with all their gates -- the slice
# partition::split(H, K, k, BLOCK_N) gives it, read from a table the host
# builds with that very function (rnn_ext._C._partition_slices), so there is
# no second copy of the rule.  Per step it runs the step kernels' tile
# functions over every batch tile and its own units, then all programs meet
# at a grid barrier (two with a projection, whose columns are split by the
# same rule).  W_hh is streamed from global memory (L2) in BLOCK_K chunks
# each step, as the step kernels read it, so every hidden size runs; or,
# with RESIDENT (the host's rule: each program owns exactly one unit tile
# and its weights fit a budget, see _sequence.why_not_resident), each
# program loads its share of W_hh once before the time loop and multiplies
# by it with one tl.dot per step (_resident_tile, _times).  BLOCK_R is the
# resident tile's row count (0 when streamed).
#
# Steps [s_begin, s_end) of the loop run (forward: t = s; backward:
# t = T - 1 - s); PHASES picks the phases of a projected step (1: the
# units, 2: the projection, 3: both).  A launch of the whole sequence uses
# s = [0, T), PHASES = 3 and SYNC; the interpreter, which runs programs one
# after another, runs K > 1 programs only one step and phase per launch
# without SYNC (the launch boundary is then the barrier) -- the same code
# and the same slices.
@triton.jit
def _grid_barrier(ctr_ptr, target, SYNC: tl.constexpr):
    """All programs of the grid meet.  ctr counts arrivals since the launch
    (zeroed by the host before it) and is never reset: barrier j of a launch
    waits until it reads K * (j + 1), which only the K arrivals of barrier j
    complete, whatever the order -- a program that runs ahead to barrier
    j + 1 adds to the count but cannot complete it alone, and there is no
    reset for a slow program to miss.  The CTA barrier before the arrival
    orders every thread's stores of this phase before the release of the
    one thread that performs the (scalar) atomic, and the one after the
    acquire orders every thread's later loads after it: with release and
    acquire at GPU scope, what one program wrote before its arrival is
    visible to every program after it leaves the barrier.  The launch is
    cooperative (launch_cooperative_grid), so all K programs are resident
    at once or the launch fails: a barrier never waits for a program that
    cannot start."""
    if SYNC:
        tl.debug_barrier()
        tl.atomic_add(ctr_ptr, 1, sem="release", scope="gpu")
        while tl.atomic_add(ctr_ptr, 0, sem="acquire", scope="gpu") < target:
            pass
        tl.debug_barrier()


@triton.jit(do_not_specialize=["s_begin", "s_end"])
def lstm_fwd_grid_kernel(
        gx_ptr, w_ptr, b_ptr, wr_ptr, h0_ptr, c0_ptr, len_ptr,
        ws_ptr,     # [T, B, 5H]
        y_ptr,      # [T, B, K]
        pin_ptr,    # [T, B, H] projection input (if PROJ)
        hn_ptr, cn_ptr,
        units_ptr,  # [programs, 2] int32: the program's hidden units
        cols_ptr,   # [programs, 2] int32: its projection columns (if PROJ)
        ctr_ptr,    # int32 arrival counter, zero at launch (if SYNC)
        s_begin, s_end, T, B, H, K,
        HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, PROJ: tl.constexpr, SYNC: tl.constexpr,
        PHASES: tl.constexpr, RESIDENT: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    ACC = ws_ptr.dtype.element_ty
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    u0 = tl.load(units_ptr + 2 * pid)
    u1 = tl.load(units_ptr + 2 * pid + 1)
    p0 = tl.load(cols_ptr + 2 * pid)
    p1 = tl.load(cols_ptr + 2 * pid + 1)
    rows = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_N)
    if RESIDENT:
        # The program's one unit tile: each gate's W_hh^T [BLOCK_R >= K, BLOCK_N]
        # stays with it for the whole sequence (no projection: see the host rule).
        tl.static_assert(not PROJ)
        wt = w_ptr + u0 * K
        wt_i = _resident_tile(wt, 1, K, cols, u1 - u0, K, BLOCK_R)
        wt_f = _resident_tile(wt + H * K, 1, K, cols, u1 - u0, K, BLOCK_R)
        wt_g = _resident_tile(wt + 2 * H * K, 1, K, cols, u1 - u0, K, BLOCK_R)
        wt_o = _resident_tile(wt + 3 * H * K, 1, K, cols, u1 - u0, K, BLOCK_R)
    else:
        wt_i = w_ptr
        wt_f = w_ptr
        wt_g = w_ptr
        wt_o = w_ptr
    for t in range(s_begin, s_end):
        first = t == 0
        step = tl.cast(t, tl.int64) * B
        prev = tl.cast(tl.maximum(t - 1, 0), tl.int64) * B
        # h_{t-1}: h0 at t = 0 (a select, not a branch: no stack frame on sm_90).
        hprev = tl.where(first, h0_ptr, y_ptr + prev * K)
        if PROJ:
            hout = pin_ptr + step * H
        else:
            hout = y_ptr + step * K
        if PHASES % 2 == 1:
            for b0 in range(0, B, BLOCK_B):
                for n0 in range(u0, u1, BLOCK_N):
                    _lstm_fwd_tile(gx_ptr + step * (4 * H), hprev, w_ptr, wt_i, wt_f, wt_g, wt_o, b_ptr,
                                   c0_ptr, h0_ptr, ws_ptr + prev * (5 * H), ws_ptr + step * (5 * H), hout,
                                   hn_ptr, cn_ptr, len_ptr, t, T, B, H, K, b0 + rows, n0 + cols, u1, first,
                                   HAS_BIAS, HAS_LEN, not PROJ, RESIDENT, PRECISION, BLOCK_K)
            _grid_barrier(ctr_ptr, programs * ((1 + PROJ) * (t - s_begin) + 1), SYNC)
        if PROJ and PHASES >= 2:
            # y_t = proj_in_t @ W_hr^T over the program's columns of P = K.
            for b0 in range(0, B, BLOCK_B):
                for n0 in range(p0, p1, BLOCK_N):
                    _row_product_tile(pin_ptr + step * H, H, wr_ptr, 1, H, H, h0_ptr, h0_ptr, h0_ptr,
                                      y_ptr + step * K, hn_ptr, len_ptr, t, T, B, K, b0 + rows, n0 + cols,
                                      p1, first, False, True, HAS_LEN, ACC, PRECISION, BLOCK_K)
            _grid_barrier(ctr_ptr, programs * (2 * (t - s_begin) + 2), SYNC)


@triton.jit(do_not_specialize=["s_begin", "s_end"])
def lstm_bwd_grid_kernel(
        gy_ptr, ghn_ptr, w_ptr, wr_ptr, c0_ptr, ws_ptr, gws_ptr,
        dc_ptr,     # [B, H] carried gradient of c (accumulation type), starts as grad_c_n
        dg_ptr,     # out [T, B, 4H]
        dproj_ptr,  # out [T, B, K] (if PROJ)
        len_ptr, units_ptr, cols_ptr, ctr_ptr,
        s_begin, s_end, T, B, H, K,
        HAS_LEN: tl.constexpr, HAS_GWS: tl.constexpr, PROJ: tl.constexpr, SYNC: tl.constexpr,
        PHASES: tl.constexpr, RESIDENT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    u0 = tl.load(units_ptr + 2 * pid)
    u1 = tl.load(units_ptr + 2 * pid + 1)
    p0 = tl.load(cols_ptr + 2 * pid)
    p1 = tl.load(cols_ptr + 2 * pid + 1)
    rows = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_N)
    if RESIDENT:
        # The program's columns of W_hh, one tile per gate's rows: [BLOCK_R >= H, BLOCK_N].
        tl.static_assert(not PROJ)
        wc = w_ptr + u0
        wt_i = _resident_tile(wc, H, 1, cols, u1 - u0, H, BLOCK_R)
        wt_f = _resident_tile(wc + H * H, H, 1, cols, u1 - u0, H, BLOCK_R)
        wt_g = _resident_tile(wc + 2 * H * H, H, 1, cols, u1 - u0, H, BLOCK_R)
        wt_o = _resident_tile(wc + 3 * H * H, H, 1, cols, u1 - u0, H, BLOCK_R)
    else:
        wt_i = w_ptr
        wt_f = w_ptr
        wt_g = w_ptr
        wt_o = w_ptr
    for s in range(s_begin, s_end):
        t = T - 1 - s
        first = t == 0
        step = tl.cast(t, tl.int64) * B
        prev = tl.cast(tl.maximum(t - 1, 0), tl.int64) * B
        # d_gates of step t+1 times W_hh; nothing after the last step.
        nxt = dg_ptr + tl.cast(tl.minimum(t + 1, T - 1), tl.int64) * B * (4 * H)
        k_next = tl.where(t + 1 < T, 4 * H, 0)
        if PROJ:
            if PHASES % 2 == 1:
                for b0 in range(0, B, BLOCK_B):
                    for n0 in range(p0, p1, BLOCK_N):
                        _row_product_tile(nxt, 4 * H, w_ptr, K, 1, k_next, gy_ptr + step * K, ghn_ptr,
                                          ghn_ptr, dproj_ptr + step * K, ghn_ptr, len_ptr, t, T, B, K,
                                          b0 + rows, n0 + cols, p1, False, True, False, HAS_LEN, ACC,
                                          PRECISION, BLOCK_K)
                _grid_barrier(ctr_ptr, programs * (2 * (s - s_begin) + 1), SYNC)
            if PHASES >= 2:
                for b0 in range(0, B, BLOCK_B):
                    for n0 in range(u0, u1, BLOCK_N):
                        _lstm_bwd_tile(dproj_ptr + step * K, K, wr_ptr, H, 1, wr_ptr, wr_ptr, wr_ptr, wr_ptr,
                                       K, gy_ptr, ghn_ptr,
                                       ws_ptr + step * (5 * H), ws_ptr + prev * (5 * H), c0_ptr,
                                       gws_ptr + step * (5 * H), dc_ptr, dg_ptr + step * (4 * H), len_ptr,
                                       t, T, B, H, b0 + rows, n0 + cols, u1, first,
                                       False, HAS_LEN, HAS_GWS, False, PRECISION, BLOCK_K)
                _grid_barrier(ctr_ptr, programs * (2 * (s - s_begin) + 2), SYNC)
        else:
            for b0 in range(0, B, BLOCK_B):
                for n0 in range(u0, u1, BLOCK_N):
                    _lstm_bwd_tile(nxt, 4 * H, w_ptr, H, 1, wt_i, wt_f, wt_g, wt_o, k_next, gy_ptr + step * H,
                                   ghn_ptr,
                                   ws_ptr + step * (5 * H), ws_ptr + prev * (5 * H), c0_ptr,
                                   gws_ptr + step * (5 * H), dc_ptr, dg_ptr + step * (4 * H), len_ptr,
                                   t, T, B, H, b0 + rows, n0 + cols, u1, first,
                                   True, HAS_LEN, HAS_GWS, RESIDENT, PRECISION, BLOCK_K)
            _grid_barrier(ctr_ptr, programs * (s - s_begin + 1), SYNC)


@triton.jit(do_not_specialize=["s_begin", "s_end"])
def gru_fwd_grid_kernel(
        gx_ptr, w_ptr, b_ptr, h0_ptr, len_ptr,
        ws_ptr,  # [T, B, 4H]
        y_ptr,   # [T, B, H]
        hn_ptr, units_ptr, ctr_ptr, s_begin, s_end, T, B, H,
        HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, SYNC: tl.constexpr, RESIDENT: tl.constexpr,
        PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    u0 = tl.load(units_ptr + 2 * pid)
    u1 = tl.load(units_ptr + 2 * pid + 1)
    rows = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_N)
    if RESIDENT:
        # Each gate's W_hh^T [BLOCK_R >= H, BLOCK_N] of the program's one unit tile.
        wt = w_ptr + u0 * H
        wt_r = _resident_tile(wt, 1, H, cols, u1 - u0, H, BLOCK_R)
        wt_z = _resident_tile(wt + H * H, 1, H, cols, u1 - u0, H, BLOCK_R)
        wt_n = _resident_tile(wt + 2 * H * H, 1, H, cols, u1 - u0, H, BLOCK_R)
    else:
        wt_r = w_ptr
        wt_z = w_ptr
        wt_n = w_ptr
    for t in range(s_begin, s_end):
        first = t == 0
        step = tl.cast(t, tl.int64) * B
        hprev = tl.where(first, h0_ptr, y_ptr + tl.cast(tl.maximum(t - 1, 0), tl.int64) * B * H)
        for b0 in range(0, B, BLOCK_B):
            for n0 in range(u0, u1, BLOCK_N):
                _gru_fwd_tile(gx_ptr + step * (3 * H), hprev, w_ptr, wt_r, wt_z, wt_n, b_ptr,
                              ws_ptr + step * (4 * H), y_ptr + step * H, hn_ptr, len_ptr, t, T, B, H,
                              b0 + rows, n0 + cols, u1, first, HAS_BIAS, HAS_LEN, RESIDENT, PRECISION, BLOCK_K)
        _grid_barrier(ctr_ptr, programs * (t - s_begin + 1), SYNC)


@triton.jit(do_not_specialize=["s_begin", "s_end"])
def gru_bwd_grid_kernel(
        gy_ptr, w_ptr, h0_ptr, y_ptr, ws_ptr, gws_ptr,
        carry_ptr,  # [B, H] (accumulation type), starts as grad_h_n
        dg_ptr,     # out [T, B, 3H]
        dhh_ptr,    # out [T, B, 3H]
        len_ptr, units_ptr, ctr_ptr, s_begin, s_end, T, B, H,
        HAS_LEN: tl.constexpr, HAS_GWS: tl.constexpr, SYNC: tl.constexpr, RESIDENT: tl.constexpr,
        PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    u0 = tl.load(units_ptr + 2 * pid)
    u1 = tl.load(units_ptr + 2 * pid + 1)
    rows = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_N)
    if RESIDENT:
        # The program's columns of W_hh, one tile per gate's rows: [BLOCK_R >= H, BLOCK_N].
        wc = w_ptr + u0
        wt_r = _resident_tile(wc, H, 1, cols, u1 - u0, H, BLOCK_R)
        wt_z = _resident_tile(wc + H * H, H, 1, cols, u1 - u0, H, BLOCK_R)
        wt_n = _resident_tile(wc + 2 * H * H, H, 1, cols, u1 - u0, H, BLOCK_R)
    else:
        wt_r = w_ptr
        wt_z = w_ptr
        wt_n = w_ptr
    for s in range(s_begin, s_end):
        t = T - 1 - s
        step = tl.cast(t, tl.int64) * B
        nxt = dhh_ptr + tl.cast(tl.minimum(t + 1, T - 1), tl.int64) * B * (3 * H)
        k_next = tl.where(t + 1 < T, 3 * H, 0)
        hprev = tl.where(t == 0, h0_ptr, y_ptr + tl.cast(tl.maximum(t - 1, 0), tl.int64) * B * H)
        for b0 in range(0, B, BLOCK_B):
            for n0 in range(u0, u1, BLOCK_N):
                _gru_bwd_tile(nxt, k_next, w_ptr, wt_r, wt_z, wt_n, gy_ptr + step * H, hprev, ws_ptr + step * (4 * H),
                              gws_ptr + step * (4 * H), carry_ptr, dg_ptr + step * (3 * H),
                              dhh_ptr + step * (3 * H), len_ptr, t, T, B, H, b0 + rows, n0 + cols, u1,
                              HAS_LEN, HAS_GWS, RESIDENT, PRECISION, BLOCK_K)
        _grid_barrier(ctr_ptr, programs * (s - s_begin + 1), SYNC)


# ------------------------------------------------- RNN (nn.RNN's cell) ----
@triton.jit
def _rnn_act(pre, RELU: tl.constexpr):
    if RELU:
        return tl.maximum(pre, 0.0)
    else:
        return _tanh(pre)


@triton.jit
def _rnn_act_grad(h, dh, RELU: tl.constexpr):
    """Gradient of the pre-activation from the activated output h; relu's
    is 0 at 0, as in torch."""
    if RELU:
        return tl.where(h > 0, dh, 0.0)
    else:
        return dh * (1.0 - h * h)


@triton.jit
def _rnn_fwd_tile(gx_ptr, hprev_ptr, w_ptr, w_tile, b_ptr, ws_ptr, y_ptr, hn_ptr, len_ptr, t, T, B, H,
                  offs_b, offs_n, n_end, first,
                  HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, RELU: tl.constexpr,
                  RESIDENT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    ACC = ws_ptr.dtype.element_ty
    DT = y_ptr.dtype.element_ty
    nm = offs_n < n_end
    mask = (offs_b[:, None] < B) & nm[None, :]
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)
    active = (t < L)[:, None]
    state = offs_b[:, None] * H + offs_n[None, :]
    pre = tl.load(gx_ptr + state, mask=mask, other=0.0).to(ACC)
    pre = _times(pre, hprev_ptr, H, w_ptr, 1, H, w_tile, offs_b, offs_n, B, n_end, H,
                 RESIDENT, PRECISION, BLOCK_K)
    if HAS_BIAS:
        pre += tl.load(b_ptr + offs_n, mask=nm, other=0.0).to(ACC)[None, :]
    h_acc = _rnn_act(pre, RELU)
    h = h_acc.to(DT)
    tl.store(ws_ptr + state, tl.where(active, h_acc, 0.0), mask=mask)
    tl.store(y_ptr + state, tl.where(active, h, 0.0).to(DT), mask=mask)
    tl.store(hn_ptr + state, h, mask=mask & (t == L - 1)[:, None])
    if first:
        empty = mask & (L == 0)[:, None]
        tl.store(hn_ptr + state, tl.load(hprev_ptr + state, mask=empty, other=0.0), mask=empty)


@triton.jit(do_not_specialize=["t"])
def rnn_fwd_step_kernel(
        gx_ptr,     # [B, H]
        hprev_ptr,  # [B, H]: h0 at t = 0, else output of step t-1
        w_ptr,      # W_hh [H, H]
        b_ptr,      # b_hh [H] (if HAS_BIAS)
        ws_ptr,     # [B, H]
        y_ptr,      # [B, H]
        hn_ptr, len_ptr, t, T, B, H,
        HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, FIRST: tl.constexpr,
        RELU: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    _rnn_fwd_tile(gx_ptr, hprev_ptr, w_ptr, w_ptr, b_ptr, ws_ptr, y_ptr, hn_ptr, len_ptr, t, T, B, H,
                  offs_b, offs_n, H, FIRST, HAS_BIAS, HAS_LEN, RELU, False, PRECISION, BLOCK_K)


@triton.jit
def _rnn_bwd_tile(dg_next_ptr, KA, w_ptr, w_tile, gy_ptr, ghn_ptr, ws_ptr, gws_ptr, dg_ptr, len_ptr,
                  t, T, B, H, offs_b, offs_n, n_end,
                  HAS_LEN: tl.constexpr, HAS_GWS: tl.constexpr, RELU: tl.constexpr,
                  RESIDENT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    ACC = ws_ptr.dtype.element_ty
    DT = dg_ptr.dtype.element_ty
    mask = (offs_b[:, None] < B) & (offs_n[None, :] < n_end)
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)
    active = (t < L)[:, None]
    state = offs_b[:, None] * H + offs_n[None, :]
    dh = tl.load(gy_ptr + state, mask=mask, other=0.0).to(ACC)
    dh += tl.load(ghn_ptr + state, mask=mask & (t == L - 1)[:, None], other=0.0).to(ACC)
    dh = _times(dh, dg_next_ptr, H, w_ptr, H, 1, w_tile, offs_b, offs_n, B, n_end, KA,
                RESIDENT, PRECISION, BLOCK_K)
    if HAS_GWS:
        dh += tl.load(gws_ptr + state, mask=mask, other=0.0)
    h = tl.load(ws_ptr + state, mask=mask, other=0.0)
    d_pre = _rnn_act_grad(h, dh, RELU)
    tl.store(dg_ptr + state, tl.where(active, d_pre, 0.0).to(DT), mask=mask)


@triton.jit(do_not_specialize=["t"])
def rnn_bwd_step_kernel(
        dg_next_ptr, KA,  # gradient of the pre-activation at step t+1 [B, H]; KA = H, or 0 at the last step
        w_ptr,        # W_hh [H, H]
        gy_ptr,       # grad of the output at step t [B, H]
        ghn_ptr,      # grad_h_n [B, H], added at each row's last step
        ws_ptr,       # [B, H] activated output of step t
        gws_ptr,      # [B, H] (if HAS_GWS)
        dg_ptr,       # out: gradient of the pre-activation at step t [B, H]
        len_ptr, t, T, B, H,
        HAS_LEN: tl.constexpr, HAS_GWS: tl.constexpr, RELU: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dh_t = d_pre_{t+1} @ W_hh + grad_y_t (+ grad_h_n at the row's last
    step) in the same kernel as the activation's gradient."""
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    _rnn_bwd_tile(dg_next_ptr, KA, w_ptr, w_ptr, gy_ptr, ghn_ptr, ws_ptr, gws_ptr, dg_ptr, len_ptr,
                  t, T, B, H, offs_b, offs_n, H, HAS_LEN, HAS_GWS, RELU, False, PRECISION, BLOCK_K)

@triton.jit
def rnn_fwd_persistent_kernel(
        gx_ptr,  # [T, B, H]
        w_ptr,   # W_hh [H, H]
        b_ptr,   # [H] (if HAS_BIAS)
        h0_ptr, len_ptr,
        ws_ptr,  # [T, B, H]
        y_ptr,   # [T, B, H]
        hn_ptr,
        T, B, H,
        HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, RELU: tl.constexpr,
        PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    ACC = ws_ptr.dtype.element_ty
    DT = y_ptr.dtype.element_ty
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)
    # W_hh^T [BLOCK_H (k), BLOCK_H (j)]: (k, j) = W_hh[j, k].
    w = tl.load(w_ptr + offs_h[None, :] * H + offs_h[:, None],
                mask=(offs_h[:, None] < H) & (offs_h[None, :] < H), other=0.0)
    bias = tl.zeros([BLOCK_B, BLOCK_H], dtype=ACC)
    if HAS_BIAS:
        bias += tl.load(b_ptr + offs_h, mask=offs_h < H, other=0.0).to(ACC)[None, :]
    idx = offs_b[:, None] * H + offs_h[None, :]
    h = tl.load(h0_ptr + idx, mask=mask, other=0.0)
    for t in range(0, T):
        active = (t < L)[:, None]
        step = tl.cast(t, tl.int64) * B * H
        pre = tl.dot(h, w, bias, input_precision=PRECISION, out_dtype=ACC)
        pre += tl.load(gx_ptr + step + idx, mask=mask, other=0.0).to(ACC)
        h_acc = _rnn_act(pre, RELU)
        h_new = h_acc.to(DT)
        tl.store(ws_ptr + step + idx, tl.where(active, h_acc, 0.0), mask=mask)
        tl.store(y_ptr + step + idx, tl.where(active, h_new, 0.0).to(DT), mask=mask)
        h = tl.where(active, h_new, h)
    tl.store(hn_ptr + idx, h, mask=mask)


@triton.jit
def rnn_bwd_persistent_kernel(
        gy_ptr,   # [T, B, H]
        ghn_ptr,  # [B, H]
        w_ptr,    # W_hh [H, H]
        ws_ptr,   # [T, B, H]
        gws_ptr,  # [T, B, H] (if HAS_GWS)
        len_ptr,
        dg_ptr,   # out [T, B, H]
        T, B, H,
        HAS_LEN: tl.constexpr, HAS_GWS: tl.constexpr, RELU: tl.constexpr,
        PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The gradient of h0 is left to the host (d_pre_0 @ W_hh, one GEMM):
    a second product site after the loop would hold W_hh in a second layout
    and spill in fp32 at the crossover."""
    ACC = ws_ptr.dtype.element_ty
    DT = dg_ptr.dtype.element_ty
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_b[:, None] < B) & (offs_h[None, :] < H)
    L = _row_lengths(len_ptr, offs_b, B, T, HAS_LEN)
    # W_hh [BLOCK_H (j), BLOCK_H (k)].
    w = tl.load(w_ptr + offs_h[:, None] * H + offs_h[None, :],
                mask=(offs_h[:, None] < H) & (offs_h[None, :] < H), other=0.0)
    idx = offs_b[:, None] * H + offs_h[None, :]
    ghn = tl.load(ghn_ptr + idx, mask=mask, other=0.0).to(ACC)
    # Gradient of the pre-activation of step t+1, in the storage type (as
    # the step strategy reads it back from memory).
    d_pre = tl.zeros([BLOCK_B, BLOCK_H], dtype=DT)
    for s in range(0, T):
        t = T - 1 - s
        active = (t < L)[:, None]
        last = (t == L - 1)[:, None]
        step = tl.cast(t, tl.int64) * B * H
        # The loaded gradients are the product's accumulator: fewer live
        # tiles than adding them after it (no spill in fp32 at the crossover).
        dh = tl.load(gy_ptr + step + idx, mask=mask, other=0.0).to(ACC)
        dh += tl.where(last, ghn, 0.0)
        if HAS_GWS:
            dh += tl.load(gws_ptr + step + idx, mask=mask, other=0.0)
        dh = tl.dot(d_pre, w, dh, input_precision=PRECISION, out_dtype=ACC)
        h = tl.load(ws_ptr + step + idx, mask=mask, other=0.0)
        d_pre = tl.where(active, _rnn_act_grad(h, dh, RELU), 0.0).to(DT)
        tl.store(dg_ptr + step + idx, d_pre, mask=mask)


@triton.jit(do_not_specialize=["s_begin", "s_end"])
def rnn_fwd_grid_kernel(
        gx_ptr, w_ptr, b_ptr, h0_ptr, len_ptr,
        ws_ptr,  # [T, B, H]
        y_ptr,   # [T, B, H]
        hn_ptr, units_ptr, ctr_ptr, s_begin, s_end, T, B, H,
        HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr, RELU: tl.constexpr, SYNC: tl.constexpr,
        RESIDENT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    """The grid strategy for nn.RNN's cell (see "grid strategy" above)."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    u0 = tl.load(units_ptr + 2 * pid)
    u1 = tl.load(units_ptr + 2 * pid + 1)
    rows = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_N)
    if RESIDENT:
        w_tile = _resident_tile(w_ptr + u0 * H, 1, H, cols, u1 - u0, H, BLOCK_R)
    else:
        w_tile = w_ptr
    for t in range(s_begin, s_end):
        first = t == 0
        step = tl.cast(t, tl.int64) * B * H
        hprev = tl.where(first, h0_ptr, y_ptr + tl.cast(tl.maximum(t - 1, 0), tl.int64) * B * H)
        for b0 in range(0, B, BLOCK_B):
            for n0 in range(u0, u1, BLOCK_N):
                _rnn_fwd_tile(gx_ptr + step, hprev, w_ptr, w_tile, b_ptr, ws_ptr + step, y_ptr + step,
                              hn_ptr, len_ptr, t, T, B, H, b0 + rows, n0 + cols, u1, first,
                              HAS_BIAS, HAS_LEN, RELU, RESIDENT, PRECISION, BLOCK_K)
        _grid_barrier(ctr_ptr, programs * (t - s_begin + 1), SYNC)


@triton.jit(do_not_specialize=["s_begin", "s_end"])
def rnn_bwd_grid_kernel(
        gy_ptr, ghn_ptr, w_ptr, ws_ptr, gws_ptr,
        dg_ptr,  # out [T, B, H]
        len_ptr, units_ptr, ctr_ptr, s_begin, s_end, T, B, H,
        HAS_LEN: tl.constexpr, HAS_GWS: tl.constexpr, RELU: tl.constexpr, SYNC: tl.constexpr,
        RESIDENT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    u0 = tl.load(units_ptr + 2 * pid)
    u1 = tl.load(units_ptr + 2 * pid + 1)
    rows = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_N)
    if RESIDENT:
        w_tile = _resident_tile(w_ptr + u0, H, 1, cols, u1 - u0, H, BLOCK_R)
    else:
        w_tile = w_ptr
    for s in range(s_begin, s_end):
        t = T - 1 - s
        step = tl.cast(t, tl.int64) * B * H
        nxt = dg_ptr + tl.cast(tl.minimum(t + 1, T - 1), tl.int64) * B * H
        k_next = tl.where(t + 1 < T, H, 0)
        for b0 in range(0, B, BLOCK_B):
            for n0 in range(u0, u1, BLOCK_N):
                _rnn_bwd_tile(nxt, k_next, w_ptr, w_tile, gy_ptr + step, ghn_ptr, ws_ptr + step,
                              gws_ptr + step, dg_ptr + step, len_ptr, t, T, B, H, b0 + rows, n0 + cols, u1,
                              HAS_LEN, HAS_GWS, RELU, RESIDENT, PRECISION, BLOCK_K)
        _grid_barrier(ctr_ptr, programs * (s - s_begin + 1), SYNC)


def _is_interpreted(fn):
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return False
    return isinstance(fn, InterpretedFunction)


# Whether these kernels were built for the interpreter (TRITON_INTERPRET=1
# when this module was imported) rather than compiled for the GPU.
INTERPRETED = _is_interpreted(lstm_fwd_step_kernel)
