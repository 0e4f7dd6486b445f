"""Compile rnn_ext's Triton kernels for an H100 (sm_90) without a GPU, exactly
as a launch would, and report what each compiled kernel uses: shared memory
(from the compiler's metadata: what the launch asks the driver for),
registers and spill (from the cubin, via the cuobjdump of the Triton wheel).

"Exactly as a launch": the host code of rnn_ext/triton/_sequence.py runs on
CPU tensors with the kernels replaced by recorders, so every launch it would
make is captured with its real arguments; each is then bound by Triton's own
launch binder (the specialisation of integers divisible by 16 or equal to 1,
of 16-byte aligned pointers, the constexprs, the options) and compiled for
GPUTarget("cuda", 90, 32).  Nothing here rebuilds a signature by hand.

    python tests/_triton_sm90.py [--workers N] check    JSON list: the launches of a grid
    python tests/_triton_sm90.py [--workers N] --write  rewrite rnn_ext/triton/persistent_sm90.json

The kernels must be defined with TRITON_INTERPRET unset, so this runs as a
script (tests/test_triton.py runs it in a subprocess).  Compiles go through
Triton's on-disk cache (TRITON_CACHE_DIR), so a second run is fast.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from rnn_ext.triton import _fit  # noqa: E402
from rnn_ext.triton import _kernels as K  # noqa: E402
from rnn_ext.triton import _sequence as S  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
KERNEL_NAMES = sorted(n for n in dir(K) if n.endswith("_kernel"))


# ------------------------------------------------------- recording launches ----
class _Recorder:
    def __init__(self, name, fn, sink):
        self.name, self.fn, self.sink = name, fn, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append((self.name, self.fn, args, kwargs))
        return launch


def record(host, *args):
    """The kernel launches host(*args) makes (nothing runs on a GPU)."""
    launches = []
    saved = {n: getattr(K, n) for n in KERNEL_NAMES}
    fit_check = S.why_not_persistent
    try:
        for n, fn in saved.items():
            setattr(K, n, _Recorder(n, fn, launches))
        # Sizes past the crossover are compiled on purpose: to show they do not fit.
        S.why_not_persistent = lambda *a, **k: None
        host(*args)
    finally:
        for n, fn in saved.items():
            setattr(K, n, fn)
        S.why_not_persistent = fit_check
    return launches


def _z(*shape, dtype):
    return torch.zeros(*shape, dtype=dtype)


def sequence_launches(cell, T, B, H, P, dtype, strategy, lengths=True, bias=True, grad_ws=True,
                      precision="ieee"):
    """Every launch of one forward and one backward of a layer, as _sequence.py makes them."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    acc = S.acc_dtype(dtype)
    L = torch.full((B,), T, dtype=torch.int64) if lengths else None
    try:
        if cell.startswith("rnn"):
            relu = cell == "rnn_relu"
            gx, w, b, h0 = _z(T, B, H, dtype=dtype), _z(H, H, dtype=dtype), _z(H, dtype=dtype), _z(B, H, dtype=dtype)
            fwd = record(S.rnn_forward, gx, w, b if bias else None, h0, L, relu, strategy)
            y, ws = _z(T, B, H, dtype=dtype), _z(T, B, H, dtype=acc)
            bwd = record(S.rnn_backward, _z(T, B, H, dtype=dtype), _z(B, H, dtype=dtype), w, h0, y, ws, L,
                         _z(T, B, H, dtype=acc) if grad_ws else None, relu, strategy)
        elif cell == "gru":
            gx, w, b, h0 = _z(T, B, 3 * H, dtype=dtype), _z(3 * H, H, dtype=dtype), _z(3 * H, dtype=dtype), _z(B, H, dtype=dtype)
            fwd = record(S.gru_forward, gx, w, b if bias else None, h0, L, strategy)
            y, ws = _z(T, B, H, dtype=dtype), _z(T, B, 4 * H, dtype=acc)
            bwd = record(S.gru_backward, _z(T, B, H, dtype=dtype), _z(B, H, dtype=dtype), w, h0, y, ws, L,
                         _z(T, B, 4 * H, dtype=acc) if grad_ws else None, strategy)
        else:
            Kd = P or H
            gx, w, b = _z(T, B, 4 * H, dtype=dtype), _z(4 * H, Kd, dtype=dtype), _z(4 * H, dtype=dtype)
            w_hr = _z(P, H, dtype=dtype) if P else None
            h0, c0 = _z(B, Kd, dtype=dtype), _z(B, H, dtype=dtype)
            fwd = record(S.lstm_forward, gx, w, b if bias else None, w_hr, h0, c0, L, strategy)
            y, ws, pin = _z(T, B, Kd, dtype=dtype), _z(T, B, 5 * H, dtype=acc), _z(T if P else 0, B, H, dtype=dtype)
            bwd = record(S.lstm_backward, _z(T, B, Kd, dtype=dtype), _z(B, Kd, dtype=dtype), _z(B, H, dtype=dtype),
                         w, w_hr, h0, c0, y, ws, pin, L, _z(T, B, 5 * H, dtype=acc) if grad_ws else None, strategy)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return fwd + bwd


_BACKEND = make_backend(TARGET)
_BINDERS = {}


def bind(name, fn, args, kwargs):
    """What Triton's launcher compiles for these arguments: (signature,
    constexprs, attrs, options), as JITFunction.run computes them."""
    if name not in _BINDERS:
        _BINDERS[name] = create_function_from_signature(fn.signature, fn.params, _BACKEND)
    bound, specialization, options = _BINDERS[name](*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(_BACKEND, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options.__dict__


# ----------------------------------------------------------------- compiling ----
def _usage(kernel):
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", out, re.S)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def shared_bytes(src, options):
    """The shared memory of a kernel without compiling it to the end: Triton's
    own stages up to TritonGPU IR, then the pass that allocates shared memory
    (the first passes of make_llir, as triton.compile runs them); the result
    is the "ttg.shared" that the full compile reports as metadata["shared"].
    Kernels far past the crossover spend minutes in LLVM and ptxas; this
    tells in seconds that they do not fit."""
    from triton._C.libtriton import ir, nvidia, passes
    from triton.backends.nvidia.compiler import get_ptx_version_from_options

    options = _BACKEND.parse_options(dict(options))
    stages = {}
    _BACKEND.add_stages(stages, options, src.language)
    context = ir.context()
    ir.load_dialects(context)
    _BACKEND.load_dialects(context)
    module = src.make_ir(TARGET, options, _BACKEND.get_codegen_implementation(options),
                         _BACKEND.get_module_map(), context)
    metadata = {"target": TARGET, **options.__dict__}
    for ext, compile_ir in stages.items():
        module = compile_ir(module, metadata)
        if ext == "ttgir":
            break
    pm = ir.pass_manager(module.context)
    passes.ttgpuir.add_combine_tensor_select_and_if(pm)
    passes.ttgpuir.add_allocate_warp_groups(pm)
    passes.convert.add_scf_to_cf(pm)
    passes.gluon.add_inliner(pm)
    nvidia.passes.ttgpuir.add_allocate_shared_memory_nv(pm, TARGET.arch,
                                                         get_ptx_version_from_options(options, TARGET.arch))
    pm.run(module, "rnn_ext_shared_bytes")
    return module.get_int_attr("ttg.shared")


def compile_one(job):
    """Shared memory, then (where that fits sm_90) registers and spill of the full compile."""
    name, signature, constexprs, attrs, options = job
    started = time.perf_counter()
    regs = spill = shared = error = None
    try:
        src = ASTSource(getattr(K, name), signature, constexprs, attrs)
        shared = shared_bytes(src, options)
        if shared <= _fit.SM90_SHARED_LIMIT:
            kernel = triton.compile(src, target=TARGET, options=options)
            regs, spill = _usage(kernel)
            shared = kernel.metadata.shared
    except Exception as e:  # reported, and failed by the test
        error = f"{type(e).__name__}: {e}"[:2000]
    return dict(registers=regs, spill_bytes=spill, shared_bytes=shared, error=error,
                compile_s=round(time.perf_counter() - started, 2))


def fits(r):
    """A compiled kernel fits one sm_90 block: shared memory within the limit, no spill."""
    return (r["error"] is None and r["shared_bytes"] <= _fit.SM90_SHARED_LIMIT
            and r["spill_bytes"] == 0)


def _shown(v):
    return v if isinstance(v, (bool, int, str, float)) or v is None else str(v)


def compile_launches(cases, workers):
    """cases: [(labels dict, launches)] -> one record per distinct compiled kernel and case."""
    jobs, keys, rows = [], {}, []
    for labels, launches in cases:
        for name, fn, args, kwargs in launches:
            sig, cx, attrs, opts = bind(name, fn, args, kwargs)
            key = repr((name, sig, cx, attrs, sorted(opts.items())))
            if key not in keys:
                keys[key] = len(jobs)
                jobs.append((name, sig, cx, attrs, opts))
            rows.append((labels, name, fn.arg_names, cx, attrs, opts, keys[key]))
    with ProcessPoolExecutor(workers) as pool:
        compiled = list(pool.map(compile_one, jobs))
    out = []
    for labels, name, arg_names, cx, attrs, opts, k in rows:
        # Paths of one element name a kernel argument: show its name.
        label = lambda p: arg_names[p[0]] if len(p) == 1 else str(p)  # noqa: E731
        r = dict(labels, kernel=name, num_warps=opts["num_warps"],
                 constexprs={label(p): _shown(v) for p, v in cx.items()},
                 specialised={label(p): str(v) for p, v in attrs.items() if v})
        r.update(compiled[k])
        out.append(r)
    return out


# --------------------------------------------------------------------- grids ----
def _precisions(dt):
    return ("ieee", "tf32") if dt == "fp32" else ("ieee",)


def persistent_case(fam, dt, H, P, prec, **flags):
    cell = "gru" if fam == "gru" else "lstm"
    labels = dict(family=fam, dtype=dt, H=H, P=P, precision=prec, strategy="persistent",
                  block_h=S._pad(H), block_k=S._pad(P or H), aligned=_fit.aligned(H, P or H), **flags)
    return labels, sequence_launches(cell, 2, 5, H, P, DTYPES[dt], "persistent", precision=prec, **flags)


def unaligned(block):
    """The smallest size that pads to `block`, not a multiple of 16 (9 for 16)."""
    return block // 2 + 1 if block > 16 else 9


def table_cases():
    """Every family x dtype x dot precision (x projection tile) x padded tile
    size, each with H (and P) a multiple of 16 and not: a launch specialises
    the kernel on that (the rows stop at the first size over the limit)."""
    sizes = (16, 32, 64, 128, 256)
    cases = []
    for fam in _fit.FAMILIES:
        for dt in DTYPES:
            for bk in ((16, 32, 64, 128, 256) if fam == "lstm_proj" else (None,)):
                for bh in sizes:
                    if bk is not None and bh < bk:
                        continue
                    for prec in _precisions(dt):
                        cases.append(persistent_case(fam, dt, bh, bk or 0, prec))
                        cases.append(persistent_case(fam, dt, unaligned(bh), unaligned(bk) if bk else 0, prec))
    return cases


def write_table(workers):
    """Compiles the table grid, stopping each row (family, dtype, precision,
    projection tile) at its first size whose shared memory is over the limit
    (larger ones need more), and writes persistent_sm90.json."""
    rows, done = [], set()
    cases = table_cases()

    def row(labels):
        return labels["family"], labels["dtype"], labels["precision"], labels["block_k"] if labels["P"] else None

    # One size at a time over every row, so a row stops at its first misfit.
    for bh in sorted({c[0]["block_h"] for c in cases}):
        batch = [c for c in cases if c[0]["block_h"] == bh and row(c[0]) not in done]
        if not batch:
            continue
        got = compile_launches(batch, workers)
        rows += got
        for r in got:
            if r["error"] is not None or r["shared_bytes"] > _fit.SM90_SHARED_LIMIT:
                done.add(row(r))
    kernels = [dict(family=r["family"], dtype=r["dtype"], precision=r["precision"], block_h=r["block_h"],
                    block_k=r["block_k"], aligned=r["aligned"], kernel=r["kernel"], shared_bytes=r["shared_bytes"],
                    registers=r["registers"], spill_bytes=r["spill_bytes"])
               for r in rows if r["error"] is None]
    kernels.sort(key=lambda e: (e["family"], e["dtype"], e["precision"], e["block_k"], e["block_h"],
                                not e["aligned"], e["kernel"]))
    data = {"source": "python tests/_triton_sm90.py --write: the persistent kernels compiled for "
                      "GPUTarget('cuda', 90, 32) by triton " + triton.__version__ + ", as launched by "
                      "rnn_ext/triton/_sequence.py with every optional input (bias, lengths, grad of "
                      "the workspace); aligned: H (and P) = the padded size, else the smallest size that pads "
                      "to it (not a multiple of 16: another specialisation); T = 2, B = 5.  shared_bytes: "
                      "the compiler's metadata['shared']; registers and spill_bytes (per thread): "
                      "cuobjdump -res-usage of the cubin, null where the shared memory alone is over "
                      "the limit (not compiled further).",
            "shared_limit_bytes": _fit.SM90_SHARED_LIMIT,
            "kernels": kernels}
    with open(_fit.TABLE_PATH, "w") as f:
        f.write('{"source": %s,\n "shared_limit_bytes": %d,\n "kernels": [\n'
                % (json.dumps(data["source"]), data["shared_limit_bytes"]))
        f.write(",\n".join("  " + json.dumps(k) for k in kernels))
        f.write("\n]}\n")
    return data


def check_cases():
    """The grid `make test` compiles.  For every family x dtype (x projection
    tile) x alignment of H (a multiple of 16 or not): the largest size "auto"
    admits and the next size up (which must not fit); one persistent case
    with no optional input; the step kernels with their largest tiles; the
    grid kernels (every cell, with and without projection), and with W_hh
    resident at the largest size the rule admits.
    (fp32 with TF32 dots, not PyTorch's default, is in the table, not
    recompiled here.)"""
    cases = []
    for fam in _fit.FAMILIES:
        n_gates = 3 if fam == "gru" else 4
        for dt, torch_dt in DTYPES.items():
            for bk in ((16, 64) if fam == "lstm_proj" else (None,)):
                for is_aligned in (True, False):
                    largest = _fit.largest_fitting_block_h(n_gates, bk or 16, bk or 0, torch_dt, "ieee",
                                                           aligned=is_aligned)
                    blocks = [largest, 2 * largest] if largest else [bk or 16]
                    for bh in blocks:
                        H = bh if is_aligned else unaligned(bh)
                        P = (bk if is_aligned else unaligned(bk)) if bk else 0
                        labels, launches = persistent_case(fam, dt, H, P, "ieee")
                        labels["admitted"] = S.use_persistent(n_gates, H, P or H, P, torch_dt)
                        cases.append((labels, launches))
    labels, launches = persistent_case("gru", "fp16", 24, 0, "ieee", lengths=False, bias=False, grad_ws=False)
    labels["admitted"] = S.use_persistent(3, 24, 24, 0, torch.float16)
    cases.append((labels, launches))
    for dt, torch_dt in DTYPES.items():
        # The RNN persistent kernels at the largest size auto admits for them
        # (bounded by the LSTM kernels', see _fit.family): compiled and
        # checked to fit; they are not in the table the crossover reads.
        largest = _fit.largest_fitting_block_h(1, 16, 0, torch_dt, "ieee", aligned=True)
        if largest:
            labels = dict(family="rnn", dtype=dt, H=largest, P=0, precision="ieee",
                          strategy="persistent-bounded")
            cases.append((labels, sequence_launches("rnn_tanh", 2, 5, largest, 0, torch_dt, "persistent")))
        # B = 64: the largest tiles _step_tiles picks.
        for cell, H, P in (("lstm", 130, 0), ("lstm", 96, 48), ("gru", 130, 0), ("rnn_tanh", 130, 0),
                           ("rnn_relu", 130, 0)):
            labels = dict(family=cell + ("_proj" if P else ""), dtype=dt, H=H, P=P, B=64,
                          precision="ieee", strategy="step")
            cases.append((labels, sequence_launches(cell, 2, 64, H, P, torch_dt, "step")))
        # The grid kernels: their tiles depend on the dtype alone (_grid_tiles),
        # so one batch size covers them; H = 130 is not a multiple of 16, the
        # LSTM at H = 256 (fp16) is, and both specialisations are compiled.
        for cell, H, P in (("lstm", 130, 0), ("lstm", 96, 48), ("gru", 130, 0), ("rnn_tanh", 130, 0),
                           ("rnn_relu", 130, 0)) + ((("lstm", 256, 0),) if dt == "fp16" else ()):
            labels = dict(family=cell + ("_proj" if P else ""), dtype=dt, H=H, P=P, B=64,
                          precision="ieee", strategy="grid")
            cases.append((labels, sequence_launches(cell, 2, 64, H, P, torch_dt, "grid")))
    # The grid kernels with W_hh resident, at the largest hidden size the
    # rule admits for both directions (the tiles at the budget), one program
    # per unit tile as the rule requires: H a multiple of 16 and not (the
    # budget depends on it), every cell; bf16 (fp16's budget and tiles) for
    # the aligned sizes only.
    for dt, torch_dt in DTYPES.items():
        if torch_dt not in S.RESIDENT_BUDGET:
            continue
        for cell in ("lstm", "gru", "rnn_tanh", "rnn_relu"):
            for is_aligned in (True, False) if dt != "bf16" else (True,):
                H = largest_resident_h({"lstm": 4, "gru": 3}.get(cell, 1), torch_dt, is_aligned)
                cases.append(resident_grid_case(cell, dt, H))
    return cases


def largest_resident_h(n_gates, dtype, aligned=True, limit=2048):
    """The largest H (a multiple of 16 or not) whose grid kernels, forward
    and backward, keep W_hh resident under the host rule (with one program
    per unit tile)."""
    block_n = S._grid_tiles(dtype)[1]
    best = None
    for H in range(16 if aligned else 17, limit + 1, 16 if aligned else 1):
        if (H % 16 == 0) != aligned:
            continue
        programs = triton.cdiv(H, block_n)
        if all(S.why_not_resident(n_gates, H, H, 0, dtype, programs, backward) is None
               for backward in (False, True)):
            best = H
    return best


def resident_grid_case(cell, dt, H):
    """The launches of a layer's grid kernels with as many programs as unit
    tiles (what the rule asks of a device), so that the rule keeps W_hh
    resident."""
    torch_dt = DTYPES[dt]
    programs = triton.cdiv(H, S._grid_tiles(torch_dt)[1])
    saved = S.GRID_PROGRAMS
    S.GRID_PROGRAMS = programs
    try:
        launches = sequence_launches(cell, 2, 64, H, 0, torch_dt, "grid")
    finally:
        S.GRID_PROGRAMS = saved
    labels = dict(family=cell, dtype=dt, H=H, P=0, B=64, precision="ieee", strategy="grid-resident",
                  programs=programs)
    return labels, launches


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--write", action="store_true", help="rewrite rnn_ext/triton/persistent_sm90.json")
    args = p.parse_args()
    if args.write:
        data = write_table(args.workers)
        print(f"wrote {_fit.TABLE_PATH}: {len(data['kernels'])} kernels")
    else:
        print(json.dumps(compile_launches(check_cases(), args.workers)))
