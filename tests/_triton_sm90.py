"""Compile every Triton kernel of rnn_ext for an H100 (sm_90) without a GPU,
with the tile sizes and warps the launcher uses, and report each kernel's
register use and spill (from the cubin, via the cuobjdump of the Triton
wheel).  The interpreter does not exercise the GPU compiler at all; this
catches what only it rejects (dot shapes, dtypes, layouts) and shows what
the crossover rule assumes: no significant spill below it.

Run as a script (tests/test_triton.py does, in a subprocess, because the
kernels must be defined with TRITON_INTERPRET unset); prints one JSON list.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from rnn_ext.triton import _kernels as K  # noqa: E402
from rnn_ext.triton import _sequence as S  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
ACC_POINTERS = ("ws_ptr", "ws_prev_ptr", "gws_ptr", "dc_ptr", "carry_ptr")


def _signature(fn, dt, constexprs):
    acc = "fp64" if dt == "fp64" else "fp32"
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "len_ptr":
            sig[name] = "*i64"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (acc if name in ACC_POINTERS else dt)
        else:
            sig[name] = "i32"
    return sig


def _usage(kernel):
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", out, re.S)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def _largest_persistent_h(n_gates, dt, proj):
    """The largest power-of-two H that strategy="auto" still runs persistent
    (with P = H / 2 when proj)."""
    best = 16
    for h in (16, 32, 64, 128, 256):
        if S.use_persistent(n_gates, h, h // 2 if proj else h, h // 2 if proj else 0, DTYPES[dt]):
            best = h
    return best


def jobs():
    out = []
    for dt, torch_dt in DTYPES.items():
        acc = tl.float64 if dt == "fp64" else tl.float32
        for prec in (("ieee", "tf32") if dt == "fp32" else ("ieee",)):
            # Persistent kernels at the crossover, with every optional input.
            for proj in (False, True):
                bh = _largest_persistent_h(4, dt, proj)
                bk = bh // 2 if proj else bh
                common = dict(HAS_LEN=True, PROJ=proj, PRECISION=prec, BLOCK_B=S.PERSISTENT_BLOCK_B,
                              BLOCK_H=bh, BLOCK_K=bk)
                out.append(("lstm_fwd_persistent_kernel", dt, dict(common, HAS_BIAS=True), S.PERSISTENT_NUM_WARPS,
                            "persistent"))
                out.append(("lstm_bwd_persistent_kernel", dt, dict(common, HAS_GWS=True), S.PERSISTENT_NUM_WARPS,
                            "persistent"))
            bh = _largest_persistent_h(3, dt, False)
            common = dict(HAS_LEN=True, PRECISION=prec, BLOCK_B=S.PERSISTENT_BLOCK_B, BLOCK_H=bh)
            out.append(("gru_fwd_persistent_kernel", dt, dict(common, HAS_BIAS=True), S.PERSISTENT_NUM_WARPS,
                        "persistent"))
            out.append(("gru_bwd_persistent_kernel", dt, dict(common, HAS_GWS=True), S.PERSISTENT_NUM_WARPS,
                        "persistent"))
            # Step kernels with the largest tiles the launcher picks.
            bb, bn, bk, warps = S._step_tiles(4096, torch_dt)
            tiles = dict(PRECISION=prec, BLOCK_B=bb, BLOCK_N=bn, BLOCK_K=bk)
            for first in (True, False):
                out.append(("lstm_fwd_step_kernel", dt, dict(tiles, HAS_BIAS=True, HAS_LEN=True, FIRST=first,
                                                             WRITE_HN=True), warps, "step"))
                out.append(("lstm_bwd_step_kernel", dt, dict(tiles, ADD_GRAD=True, HAS_LEN=True, HAS_GWS=True,
                                                             FIRST=first), warps, "step"))
                out.append(("gru_fwd_step_kernel", dt, dict(tiles, HAS_BIAS=True, HAS_LEN=True, FIRST=first),
                            warps, "step"))
                out.append(("row_product_kernel", dt, dict(tiles, ADD_GRAD=not first, WRITE_FINAL=first,
                                                           FIRST=first, HAS_LEN=True, ACC=acc), warps, "step"))
            out.append(("gru_bwd_step_kernel", dt, dict(tiles, HAS_LEN=True, HAS_GWS=True), warps, "step"))
            # RNN (one W_hh tile): tanh for both strategies, relu for the step kernels too.
            bh = _largest_persistent_h(1, dt, False)
            common = dict(HAS_LEN=True, RELU=False, PRECISION=prec, BLOCK_B=S.PERSISTENT_BLOCK_B, BLOCK_H=bh)
            out.append(("rnn_fwd_persistent_kernel", dt, dict(common, HAS_BIAS=True), S.PERSISTENT_NUM_WARPS,
                        "persistent"))
            out.append(("rnn_bwd_persistent_kernel", dt, dict(common, HAS_GWS=True), S.PERSISTENT_NUM_WARPS,
                        "persistent"))
            for relu in (False, True):
                out.append(("rnn_fwd_step_kernel", dt, dict(tiles, HAS_BIAS=True, HAS_LEN=True, FIRST=relu,
                                                            RELU=relu), warps, "step"))
                out.append(("rnn_bwd_step_kernel", dt, dict(tiles, HAS_LEN=True, HAS_GWS=True, RELU=relu),
                            warps, "step"))
    return out


def compile_one(job):
    name, dt, constexprs, warps, strategy = job
    fn = getattr(K, name)
    try:
        src = triton.compiler.ASTSource(fn, _signature(fn, dt, constexprs), constexprs)
        kernel = triton.compile(src, target=TARGET, options={"num_warps": warps})
        regs, spill = _usage(kernel)
        error = None
    except Exception as e:  # reported, and failed by the test
        regs, spill, error = None, None, f"{type(e).__name__}: {e}"[:2000]
    shown = {k: (str(v) if not isinstance(v, (bool, int, str)) else v) for k, v in constexprs.items()}
    return dict(kernel=name, dtype=dt, constexprs=shown, num_warps=warps, strategy=strategy,
                registers=regs, spill_bytes=spill, error=error)


if __name__ == "__main__":
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(compile_one, jobs()))
    print(json.dumps(results))
