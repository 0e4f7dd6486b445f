"""python -m benchmarks: rnn_ext's LSTM and GRU against torch.nn (cuDNN on a
GPU; oneDNN or PyTorch's native loop on a CPU).  See README "Benchmarks" and
`python -m benchmarks --help`."""
import argparse
import datetime
import gc
import importlib.metadata
import math
import os
import platform
import re
import subprocess
import sys
import time
import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from . import cases as C
from . import report, timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "benchmarks", "out")
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
TORCH = "torch.nn"
# Variants of a backend, selected by the switch each reads at every call
# (forward and backward alike): the persistent CUDA kernels where their fit
# rule admits the layer (elsewhere the stepwise loop runs), each Triton
# strategy by name, and the CPU executor with MKL's GEMMs instead of oneDNN's
# brgemm.  Opt-in: none is a default.
VARIANTS = {
    "cpu:mkl": ("RNN_EXT_CPU_BRGEMM", "0"),
    "cuda:persistent": ("RNN_EXT_CUDA_PERSISTENT", "1"),
    "triton:persistent": ("RNN_EXT_TRITON_STRATEGY", "persistent"),
    "triton:grid": ("RNN_EXT_TRITON_STRATEGY", "grid"),
    "triton:step": ("RNN_EXT_TRITON_STRATEGY", "step"),
}
EXT_BACKENDS = ("cuda", "triton", "cpu", "reference") + tuple(VARIANTS)
DEFAULT_BACKENDS = ("cuda", "triton", "cpu")  # "reference" is a readable Python loop: opt-in

# Repeats per grid: warm-up calls, warm-up seconds, time budget of the timed
# samples per implementation and case, and bounds on their number.  The CPU
# grid takes at least 11 samples: with 5, the ratios of the cases near
# parity moved by up to 15% from one run to the next on the 2-core VM the
# CPU figures come from (its speed drifts within seconds); with 11 two runs
# agreed within about 5% (benchmarks/NOTES.md), for 1.5x the wall time.
TIMING = {
    "gpu": dict(warmup_calls=3, warmup_s=0.03, budget_s=0.15, min_reps=7, max_reps=100),
    "cpu": dict(warmup_calls=1, warmup_s=0.0, budget_s=0.5, min_reps=11, max_reps=25),
    "quick": dict(warmup_calls=1, warmup_s=0.0, budget_s=0.01, min_reps=2, max_reps=5),
}
MATMUL_N = {"gpu": 8192, "cpu": 1024, "quick": 512}


def impl_name(backend):
    return TORCH if backend is None else f"rnn_ext.{backend}"


def base_backend(backend):
    """The rnn_ext backend a variant runs ("cuda" for "cuda:persistent")."""
    return backend.partition(":")[0]


def switched(backend, fn):
    """fn, run with the switch of `backend`'s variant set (VARIANTS) and the
    environment restored after; fn itself for a plain backend."""
    if backend not in VARIANTS:
        return fn
    var, value = VARIANTS[backend]

    def call(*args, **kwargs):
        before = os.environ.get(var)
        os.environ[var] = value
        try:
            return fn(*args, **kwargs)
        finally:
            if before is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = before
    return call


# ---------------------------------------------------------------- set-up --
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark rnn_ext.LSTM / rnn_ext.GRU against torch.nn.LSTM / GRU.",
        epilog="Lists are comma-separated.  Case names take shell patterns: --cases 'latency-b1-*'.")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda when a GPU is present, else cpu")
    p.add_argument("--grid", choices=("auto", "gpu", "cpu", "quick"), default="auto",
                   help="sizes: gpu (full), cpu (shorter sequences), quick (tiny); "
                        "auto: gpu on a GPU, cpu on a CPU")
    p.add_argument("--quick", action="store_true", help="same as --grid quick (under a minute on a CPU)")
    p.add_argument("--cases", default="", help="case (shape) names or patterns; default all")
    p.add_argument("--cells", default=",".join(C.CELLS), help="lstm, gru, rnn (nn.RNN, tanh)")
    p.add_argument("--modes", default="infer,train", help="infer (forward, no_grad), train (forward+backward)")
    p.add_argument("--dtypes", default=None,
                   help="fp32, fp16, bf16 (fp64 too); default fp32,fp16,bf16 on a GPU, fp32 on a CPU")
    p.add_argument("--backends", default=None,
                   help=f"rnn_ext backends among {', '.join(EXT_BACKENDS)}; default every one of "
                        f"{', '.join(DEFAULT_BACKENDS)} that can run the device and dtype. "
                        "torch.nn is always run: it is the baseline")
    p.add_argument("--tf32", choices=("off", "on"), default="off",
                   help="fp32 on a GPU: TF32 for cuBLAS and cuDNN alike (PyTorch's defaults differ: "
                        "cuDNN RNNs use TF32, cuBLAS does not); default off")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed samples per implementation and case")
    p.add_argument("--min-reps", type=int, default=None)
    p.add_argument("--max-reps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds after which no further case starts (the rest are recorded as not "
                        "run), so that a run ends within a time limit")
    p.add_argument("--out", default=None, help=f"output folder (default {os.path.relpath(OUT_DIR, ROOT)})")
    p.add_argument("--results", action="store_true",
                   help="write into benchmarks/results/ (GPU runs, to be committed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    if args.quick:
        args.grid = "quick"
    return args


def split(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def resolve_device(args):
    if args.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks: --device cuda, but no CUDA GPU is available")
    return torch.device(args.device)


def available_backends(requested, device, dtype):
    """({backend: None}, {backend: why not}) for the requested backends."""
    from rnn_ext import backends

    ok, skipped = [], {}
    for b in requested:
        reason = backends.why_not(base_backend(b), device, dtype)
        if reason is None and base_backend(b) == "triton" and device.type == "cpu":
            # Runnable only under the Triton interpreter (as the test suite
            # runs it): a correctness tool, not something to time.
            reason = "on a CPU it runs only under the Triton interpreter, which is not timed"
        if reason is None:
            ok.append(b)
        else:
            skipped[b] = reason
    return ok, skipped


def git_commit():
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dist_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()} ({torch.get_num_threads()} threads)"


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def loadavg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def environment(device, args):
    import rnn_ext

    commit, dirty = git_commit()
    env = {
        "device": device_name(device),
        "device_type": device.type,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": dist_version("triton"),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "rnn_ext": rnn_ext.__version__,
        },
        "rnn_ext_with_cuda": bool(rnn_ext.WITH_CUDA),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_bytes": props.total_memory, "sm_count": props.multi_processor_count,
                      "l2_bytes": getattr(props, "L2_cache_size", None)}
    return env


# ----------------------------------------------------------------- a case --
def make_module(shape, cell, backend, device, dtype, ref=None):
    """torch.nn module (backend None) or the rnn_ext one with ref's weights."""
    kw = dict(num_layers=shape.layers, bidirectional=shape.bidirectional)
    if cell == "lstm" and shape.proj:
        kw["proj_size"] = shape.proj
    if backend is None:
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        return cls(shape.I, shape.H, **kw).to(device=device, dtype=dtype)
    import rnn_ext

    cls = {"lstm": rnn_ext.LSTM, "gru": rnn_ext.GRU, "rnn": rnn_ext.RNN}[cell]
    module = cls(shape.I, shape.H, backend=base_backend(backend), device=device, dtype=dtype, **kw)
    module.load_state_dict(ref.state_dict())
    return module


def input_sets(shape, device, dtype, train, sets):
    """`sets` inputs (padded tensors or PackedSequences) whose data are
    leaves (requiring grad for training), and those leaves."""
    inputs, leaves = [], []
    lengths = C.packed_lengths(shape) if shape.packed else None
    for _ in range(sets):
        x = torch.randn(shape.T, shape.B, shape.I, device=device, dtype=dtype)
        if shape.packed:
            p = pack_padded_sequence(x, lengths, enforce_sorted=False)
            leaf = p.data.detach().requires_grad_(train)
            inputs.append(PackedSequence(leaf, p.batch_sizes, p.sorted_indices, p.unsorted_indices))
        else:
            leaf = x.requires_grad_(train)
            inputs.append(leaf)
        leaves.append(leaf)
    return inputs, leaves


def rotation(shape, device, dtype):
    """How many input sets to cycle through: enough that they together are
    twice the size of the last-level cache (so a call never finds its input
    in it), at least 2, at most 16."""
    per_set = shape.T * shape.B * shape.I * torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        cache = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 << 20
    else:
        cache = 32 << 20
    return int(min(16, max(2, math.ceil(2 * cache / max(per_set, 1)))))


def output_data(out):
    y = out[0]
    return y.data if isinstance(y, PackedSequence) else y


def torch_path(module, inp):
    """Which library ran torch.nn's forward, read off the autograd graph of a
    forward with grad enabled: cuDNN, oneDNN, or PyTorch's native loop."""
    with torch.enable_grad():
        y = output_data(module(inp))
    seen, todo = 0, [y.grad_fn]
    while todo and seen < 200:
        fn = todo.pop()
        if fn is None:
            continue
        seen += 1
        name = type(fn).__name__
        if "Cudnn" in name:
            return "cuDNN"
        if "Mkldnn" in name:
            return "oneDNN"
        todo += [nxt for nxt, _ in fn.next_functions]
    return "native"


def make_step(module, inputs, leaves, train, dy, packed):
    params = [p for p in module.parameters()]
    n = len(inputs)

    def reset():
        for p in params:
            p.grad = None
        for leaf in leaves:
            leaf.grad = None

    if not train:
        def step(i):
            with torch.no_grad():
                module(inputs[i % n])
    else:
        def step(i):
            k = i % n
            for p in params:
                p.grad = None
            leaves[k].grad = None
            out = module(inputs[k])
            output_data(out).backward(dy)
    return step, reset


def run_case(case, device, backends, clock, timing_opts, seed):
    shape, dtype = case.shape, C.DTYPES[case.dtype]
    train = case.mode == "train"
    torch.manual_seed(seed)
    ref = make_module(shape, case.cell, None, device, dtype)
    modules = {TORCH: ref}
    variant = {TORCH: None}  # implementation name -> backend (its variant's switch)
    errors = {}
    for b in backends:
        try:
            modules[impl_name(b)] = make_module(shape, case.cell, b, device, dtype, ref)
            variant[impl_name(b)] = b
        except Exception as e:  # noqa: BLE001 -- reported, the run goes on
            errors[impl_name(b)] = f"{type(e).__name__}: {e}"
    for m in modules.values():
        m.train(train)
    inputs, leaves = input_sets(shape, device, dtype, train, rotation(shape, device, dtype))
    with torch.no_grad():
        y_ref = output_data(ref(inputs[0]))
    dy = torch.randn_like(y_ref) if train else None

    record = {"id": case.id, "shape": shape.name, "group": shape.group, "cell": case.cell,
              "mode": case.mode, "dtype": case.dtype, "sizes": shape.as_dict(),
              "describe": shape.describe(), "tokens": C.tokens(shape),
              "flops": C.flops(shape, case.cell, case.mode),
              "torch_path": torch_path(ref, inputs[0]), "input_sets": len(inputs),
              "results": {}}

    steps, resets, diffs = {}, {}, {}
    for name, m in modules.items():
        try:
            if name != TORCH:
                with torch.no_grad():
                    y = output_data(switched(variant[name], m)(inputs[0]))
                diffs[name] = (y.float() - y_ref.float()).abs().max().item()
            step, resets[name] = make_step(m, inputs, leaves, train, dy, shape.packed)
            steps[name] = switched(variant[name], step)
        except Exception as e:  # noqa: BLE001
            errors[name] = f"{type(e).__name__}: {e}"
    del y_ref

    try:
        samples = timing.measure(steps, clock, errors=errors, **timing_opts)
    except Exception as e:  # noqa: BLE001 -- a failure while sampling: the case has no figures
        samples = {}
        for name in steps:
            errors.setdefault(name, f"{type(e).__name__}: {e}")
    for name in list(modules):
        r = {"error": errors.get(name)}
        if name in samples:
            r.update(timing.summary(samples[name]))
            r["samples_s"] = samples[name]
            peak, extra = (None, None)
            try:
                peak, extra = timing.peak_memory(lambda: steps[name](0), resets[name], device)
            except Exception as e:  # noqa: BLE001
                r["error"] = f"memory: {type(e).__name__}: {e}"
            r["peak_mem_bytes"], r["step_mem_bytes"] = peak, extra
        if name != TORCH:
            r["max_abs_diff"] = diffs.get(name)
        record["results"][name] = r
    del modules, steps, resets, inputs, leaves, ref
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record


def failed_case(case, backends, error, device):
    """The record of a case that could not be set up (e.g. torch.nn itself
    failed): every implementation carries the error."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    msg = f"{type(error).__name__}: {error}"
    shape = case.shape
    return {"id": case.id, "shape": shape.name, "group": shape.group, "cell": case.cell,
            "mode": case.mode, "dtype": case.dtype, "sizes": shape.as_dict(),
            "describe": shape.describe(), "tokens": C.tokens(shape),
            "flops": C.flops(shape, case.cell, case.mode), "torch_path": "-", "input_sets": 0,
            "results": {impl_name(b): {"error": msg} for b in [None, *backends]}}


def add_figures(record, rate):
    """Floor, distance from the floor, and speed-up over torch.nn."""
    record["matmul_flops_per_s"] = rate
    record["floor_s"] = record["flops"] / rate
    base = record["results"].get(TORCH, {}).get("median_s")
    for name, r in record["results"].items():
        t = r.get("median_s")
        r["floor_ratio"] = t / record["floor_s"] if t else None
        if name != TORCH:
            r["speedup"] = base / t if (t and base) else None
    return record


# ------------------------------------------------------------------- main --
def run(args):
    device = resolve_device(args)
    grid = args.grid if args.grid != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.results and device.type != "cuda":
        raise SystemExit("benchmarks: --results is for GPU runs (benchmarks/results/ holds GPU "
                         "results only); use --out for a CPU run")
    dtypes = split(args.dtypes) if args.dtypes else (["fp32", "fp16", "bf16"] if device.type == "cuda"
                                                     else ["fp32"])
    cells, modes = split(args.cells), split(args.modes)
    requested = split(args.backends) if args.backends is not None else list(DEFAULT_BACKENDS)
    for what, got, allowed in (("dtype", dtypes, C.DTYPES), ("cell", cells, C.CELLS),
                               ("mode", modes, C.MODES), ("backend", requested, EXT_BACKENDS)):
        bad = [g for g in got if g not in allowed]
        if bad:
            raise SystemExit(f"benchmarks: unknown {what} {', '.join(bad)}; choose among "
                             f"{', '.join(allowed)}")
    try:
        shapes = C.select_shapes(C.grid_shapes(grid), split(args.cases))
    except ValueError as e:
        raise SystemExit(f"benchmarks: {e}")
    case_list = C.build_cases(shapes, cells, modes, dtypes)
    if not case_list:
        raise SystemExit("benchmarks: the selection holds no case")

    if args.list:
        for case in case_list:
            print(f"{case.id:40s} {case.shape.describe()}")
        return None

    tf32 = args.tf32 == "on"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    topts = dict(TIMING[grid])
    for key, value in (("budget_s", args.budget), ("min_reps", args.min_reps),
                       ("max_reps", args.max_reps)):
        if value is not None:
            topts[key] = value

    started = time.perf_counter()
    env = environment(device, args)
    load_start = loadavg()
    notes = []
    if grid == "cpu":
        notes.append(C.CPU_SCALE_NOTE)
    if grid == "quick":
        notes.append("Quick grid: tiny sizes that check the harness; the figures say little "
                     "about speed.")
    if device.type == "cpu":
        notes.append("Peak memory is not measured on a CPU (PyTorch keeps no CPU allocator "
                     "statistics): the memory columns say n/m.")
        notes.append("Where and why rnn_ext's CPU backend is slower than torch.nn: "
                     "benchmarks/NOTES.md.")
    else:
        notes.append(f"fp32 TF32 {'on' if tf32 else 'off'} for both cuBLAS and cuDNN.")

    per_dtype = {}
    for d in dtypes:
        ok, skipped = available_backends(requested, device, C.DTYPES[d])
        per_dtype[d] = {"backends": ok, "skipped": skipped}
        for b, why in skipped.items():
            # Not worth a note: a default backend made for the other device.
            if args.backends is None and b in ("cpu", "cuda") and b != device.type:
                continue
            notes.append(f"rnn_ext.{b} not run for {d}: {why}")

    clock = timing.Clock(device)
    rates = {d: timing.matmul_rate(device, C.DTYPES[d], MATMUL_N[grid]) for d in dtypes}

    records = []
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(case_list), desc="benchmarks", unit="case", file=sys.stderr,
                   dynamic_ncols=True)
    with warnings.catch_warnings():
        # nn.LSTM with proj_size on a CPU warns that oneDNN cannot run it; the
        # table says which library ran each case.
        warnings.filterwarnings("ignore", message=".*not supported with oneDNN.*")
        for case in case_list:
            if bar is not None:
                bar.set_postfix_str(case.id)
            if args.deadline is not None and time.perf_counter() - started > args.deadline:
                record = failed_case(case, per_dtype[case.dtype]["backends"], TimeoutError(
                    f"not run: the run's --deadline of {args.deadline:g} s had passed"), device)
                records.append(add_figures(record, rates[case.dtype]))
                continue
            try:
                record = run_case(case, device, per_dtype[case.dtype]["backends"], clock, topts,
                                  args.seed)
            except Exception as e:  # noqa: BLE001 -- one broken case must not end a long run
                record = failed_case(case, per_dtype[case.dtype]["backends"], e, device)
            records.append(add_figures(record, rates[case.dtype]))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    load_end = loadavg()
    cores = os.cpu_count() or 1
    if device.type == "cpu" and max(load_start or 0, load_end or 0) > cores + 0.5:
        notes.append(f"The machine was busy during the run (1-minute load average "
                     f"{load_start:.1f} at the start, {load_end:.1f} at the end, on {cores} "
                     f"cores): other processes shared the CPU, so the times are noisy.")
    result = {
        "schema": 1,
        "meta": dict(env, grid=grid, dtypes=dtypes, cells=cells, modes=modes,
                     backends_requested=requested, backends=per_dtype,
                     tf32={"cublas": torch.backends.cuda.matmul.allow_tf32,
                           "cudnn": torch.backends.cudnn.allow_tf32} if device.type == "cuda"
                     else None,
                     timing=dict(topts, method=("CUDA events, device synchronized before each "
                                                "sample" if device.type == "cuda"
                                                else "time.perf_counter"),
                                 statistic="median"),
                     matmul={"n": MATMUL_N[grid], "statistic": "best of 10",
                             "flops_per_s": {d: rates[d] for d in dtypes}},
                     loadavg={"start": load_start, "end": load_end},
                     argv=sys.argv[1:] if args is not None else None,
                     wall_s=None),
        "notes": notes,
        "cases": records,
    }
    result["meta"]["wall_s"] = time.perf_counter() - started
    return result


def output_paths(result, args):
    folder = RESULTS_DIR if args.results else (args.out or OUT_DIR)
    os.makedirs(folder, exist_ok=True)
    stamp = datetime.datetime.fromisoformat(result["meta"]["date"]).strftime("%Y%m%d-%H%M%S")
    stem = os.path.join(folder, f"{slug(result['meta']['device'])}_{stamp}")
    return {"json": stem + ".json", "md": stem + ".md", "png": stem + ".png"}


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    if result is None:
        return None
    paths = output_paths(result, args)
    report.write_json(result, paths["json"])
    report.write_markdown(result, paths["md"])
    report.write_chart(result, paths["png"])
    print(report.terminal(result))
    print()
    for kind, path in paths.items():
        print(f"{kind:5s} {os.path.relpath(path)}")
    print(f"wall time {result['meta']['wall_s']:.1f} s")
    return paths
