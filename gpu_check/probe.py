"""Phase "probe": microbenchmarks of what the persistent kernels rest on, each
a median over many repetitions.

  launch      an empty kernel: launch + synchronize (host clock), and one of
              1000 back-to-back launches (CUDA events)
  grid        a cooperative grid-wide barrier (grid.sync()) at one block per SM
  cluster     a thread-block-cluster barrier (cluster.sync()), clusters of 2, 4, 8
  flag        a flag/counter barrier through L2 at one block per SM
  host/step   each backend's time loop under torch.profiler: kernels per step,
              and host time per step (the call's return, without waiting for
              the GPU) next to device time per step (synchronized)

The CUDA microkernels are gpu_check/probe_kernels.cu (CUDA headers only),
built with nvcc for the device at hand into build/gpu_check/ and called
through ctypes.  A dry run measures host/step on the CPU backends only.

Files: probe.md, probe.json, probe.log (nvcc's output and errors).
"""
import ctypes
import os
import statistics
import subprocess
import time

import torch

from . import common

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe_kernels.cu")
BUILD_DIR = os.path.join(common.ROOT, "build", "gpu_check")


def nvcc_command(arch, out):
    return ["nvcc", "-O3", "-std=c++17", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-shared",
            "-Xcompiler", "-fPIC", "-o", out, SOURCE]


def build(arch, log):
    os.makedirs(BUILD_DIR, exist_ok=True)
    lib = os.path.join(BUILD_DIR, f"probe_kernels_sm{arch}.so")
    cmd = nvcc_command(arch, lib)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log.append("$ " + " ".join(cmd) + "\n" + p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"nvcc failed (exit {p.returncode}): {p.stderr[-1500:]}")
    return lib


def microbenchmarks(lib_path, sm_count):
    lib = ctypes.CDLL(lib_path)
    lib.probe_error_string.restype = ctypes.c_char_p
    out = (ctypes.c_float * 2)()
    results = {}

    def call(name, fn, *args):
        err = fn(*args, out)
        if err:
            results[name] = dict(error=lib.probe_error_string(err).decode())
            return None
        return list(out)

    r = call("launch", lib.probe_launch_latency, 200, 1000)
    if r:
        results["launch"] = dict(round_trip_us=r[0], back_to_back_us=r[1], reps=200, batch=1000)
    iters, reps = 2000, 21
    r = call("grid_barrier", lib.probe_grid_barrier, sm_count, 128, iters, reps)
    if r:
        results["grid_barrier"] = dict(us=r[0], blocks=sm_count, threads=128, iters=iters, reps=reps)
    for cluster in (2, 4, 8):
        blocks = (sm_count // cluster) * cluster
        r = call(f"cluster_barrier_{cluster}", lib.probe_cluster_barrier, cluster, blocks, 128, iters, reps)
        if r:
            results[f"cluster_barrier_{cluster}"] = dict(us=r[0], cluster=cluster, blocks=blocks, threads=128,
                                                          iters=iters, reps=reps)
    r = call("flag_barrier", lib.probe_flag_barrier, sm_count, 128, iters, reps)
    if r:
        results["flag_barrier"] = dict(us=r[0], blocks=sm_count, threads=128, iters=iters, reps=reps)
    return results


# ------------------------------------------------------------ host per step ----
def _backends(device):
    if device.type == "cuda":
        return ["torch.nn", "cuda", "triton:step", "triton:persistent", "triton:grid"]
    return ["torch.nn", "cpu"]


def _module(cell, backend, H, dtype, device):
    import rnn_ext

    if backend == "torch.nn":
        cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
        return cls(H, H, device=device, dtype=dtype)
    cls = rnn_ext.LSTM if cell == "lstm" else rnn_ext.GRU
    return cls(H, H, device=device, dtype=dtype, backend=backend.partition(":")[0])


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def host_cost(device, dtype, T, B, H, reps):
    """Per cell, backend and mode: kernels per step, host and device time per step."""
    from torch.profiler import ProfilerActivity, profile

    rows = []
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for cell in ("lstm", "gru"):
        for backend in _backends(device):
            for mode in ("infer", "train"):
                row = dict(cell=cell, backend=backend, mode=mode, T=T, B=B, H=H, dtype=str(dtype).replace("torch.", ""))
                strategy = backend.partition(":")[2]
                if strategy:
                    os.environ["RNN_EXT_TRITON_STRATEGY"] = strategy
                try:
                    m = _module(cell, backend, H, dtype, device)
                    x = torch.randn(T, B, H, device=device, dtype=dtype, requires_grad=mode == "train")

                    def call():
                        if mode == "infer":
                            with torch.no_grad():
                                m(x)
                        else:
                            m(x)[0].sum().backward()

                    for _ in range(3):
                        call()
                    _sync(device)
                    host, total = [], []
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        call()
                        t1 = time.perf_counter()
                        _sync(device)
                        t2 = time.perf_counter()
                        host.append((t1 - t0) / T * 1e6)
                        total.append((t2 - t0) / T * 1e6)
                    with profile(activities=activities) as prof:
                        call()
                        _sync(device)
                    kernels = sum(1 for e in prof.events()
                                  if getattr(e, "device_type", None) is not None and e.device_type.name == "CUDA")
                    row.update(host_us_per_step=statistics.median(host), wall_us_per_step=statistics.median(total),
                               kernels_per_step=kernels / T, reps=reps)
                except Exception as e:  # noqa: BLE001 -- reported per row
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                finally:
                    os.environ.pop("RNN_EXT_TRITON_STRATEGY", None)
                rows.append(row)
    return rows


def run(out, dry_run):
    env = common.environment()
    log = []
    data = dict(phase="probe", dry_run=dry_run, environment=env, microbenchmarks=None, host_cost=[])
    device = torch.device("cuda" if env["cuda_available"] and not dry_run else "cpu")
    ok = True
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability()
        try:
            lib = build(f"{major}{minor}", log)
            data["microbenchmarks"] = microbenchmarks(lib, env["gpu"]["sm_count"])
        except Exception as e:  # noqa: BLE001 -- reported; host/step still runs
            data["microbenchmarks"] = dict(error=f"{type(e).__name__}: {e}")
            ok = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        for dtype, H in ((torch.float32, 32), (torch.float32, 256), (torch.float16, 256)):
            data["host_cost"] += host_cost(device, dtype, T=256, B=16, H=H, reps=15)
    else:
        log.append("no CUDA GPU (or a dry run): microbenchmarks skipped; host/step on the CPU backends only\n")
        data["host_cost"] = host_cost(device, torch.float32, T=8, B=4, H=16, reps=2)
    ok = ok and not any("error" in r and not r["backend"].startswith("triton:persistent") for r in data["host_cost"])
    data["ok"] = ok
    common.write_json(os.path.join(out, "probe.json"), data)
    common.write_text(os.path.join(out, "probe.log"), common.cut("\n".join(log)))

    lines = ["# gpu_check: probe" + (" (dry run: host cost on the CPU backends only)" if dry_run else ""), ""]
    lines += common.env_lines(env) + [""]
    mb = data["microbenchmarks"]
    if mb:
        lines += ["## Microbenchmarks (median)", "", "| what | us | setting |", "| --- | --- | --- |"]
        for name, r in mb.items():
            if not isinstance(r, dict) or "error" in r:
                lines.append(f"| {name} | error | {r if not isinstance(r, dict) else r['error']} |")
            elif name == "launch":
                lines.append(f"| empty kernel, launch + synchronize | {r['round_trip_us']:.2f} | {r['reps']} reps |")
                lines.append(f"| empty kernel, back-to-back | {r['back_to_back_us']:.2f} | batches of {r['batch']} |")
            else:
                setting = ", ".join(f"{k} {v}" for k, v in r.items() if k != "us")
                lines.append(f"| {name.replace('_', ' ')} | {r['us']:.2f} | {setting} |")
        lines.append("")
    lines += ["## Host cost per step of each time loop (median)", "",
              "| cell | dtype | T, B, H | backend | mode | kernels/step | host us/step | wall us/step |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in data["host_cost"]:
        if "error" in r:
            lines.append(f"| {r['cell']} | {r['dtype']} | {r['T']}, {r['B']}, {r['H']} | {r['backend']} | {r['mode']} | "
                         f"error: {r['error']} | | |")
        else:
            lines.append(f"| {r['cell']} | {r['dtype']} | {r['T']}, {r['B']}, {r['H']} | {r['backend']} | {r['mode']} | "
                         f"{r['kernels_per_step']:.2f} | {r['host_us_per_step']:.1f} | {r['wall_us_per_step']:.1f} |")
    lines += ["", "host: until the call returns (what the CPU spends enqueueing); wall: until the GPU is "
              "done.  triton:persistent raises where its kernels cannot fit "
              "(larger H): that row's error is expected there."]
    common.write_text(os.path.join(out, "probe.md"), "\n".join(lines))
    return ok
