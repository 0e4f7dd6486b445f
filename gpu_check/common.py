"""What every phase shares: the machine's description, running a command
with a time limit and a cut log, and writing the phase's files."""
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FILES = 8              # files one phase may leave in OUT (the device tool brings back 8)
LOG_LIMIT = 256 * 1024     # bytes of a log kept: its head and its tail
PHASE_BUDGET_S = 420       # seconds for a phase's main run: with start-up and a stop, inside 8 minutes


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run_text(cmd, timeout=30):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        return (p.stdout + p.stderr).strip() if p.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment():
    """Devices and versions: nvidia-smi, torch, CUDA, cuDNN, triton, nvcc,
    compute-sanitizer, the git commit."""
    import torch

    env = {
        "date": now(),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": _version("triton"),
        "pytest": _version("pytest"),
        "pytest_xdist": _version("pytest-xdist"),
        "pytest_timeout": _version("pytest-timeout"),
        "hypothesis": _version("hypothesis"),
        "git_commit": _run_text(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(_run_text(["git", "status", "--porcelain", "--untracked-files=no"])),
        "cuda_available": torch.cuda.is_available(),
        "nvcc": _first_line(_run_text(["nvcc", "--version"]), "release"),
        "compute_sanitizer": _first_line(_run_text(["compute-sanitizer", "--version"]), "Version"),
        "nvidia_smi": _run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                                 "clocks.max.sm,power.limit,compute_mode", "--format=csv"]),
        "env": {k: os.environ.get(k) for k in ("TORCH_CUDA_ARCH_LIST", "CUDA_VISIBLE_DEVICES",
                                               "TRITON_INTERPRET", "RNN_EXT_TRITON_STRATEGY")},
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
                      "memory_bytes": p.total_memory, "l2_bytes": getattr(p, "L2_cache_size", None),
                      "shared_per_block_optin": getattr(p, "shared_memory_per_block_optin", None)}
    try:
        import rnn_ext

        env["rnn_ext_with_cuda"] = bool(rnn_ext.WITH_CUDA)
        env["rnn_ext_file"] = rnn_ext.__file__
    except Exception as e:  # noqa: BLE001 -- reported: the phase says the extension is broken
        env["rnn_ext_import_error"] = f"{type(e).__name__}: {e}"
    return env


def _first_line(text, word):
    if not text:
        return None
    for line in text.splitlines():
        if word in line:
            return line.strip()
    return text.splitlines()[-1].strip()


def cut(text, limit=LOG_LIMIT):
    """Head and tail of a long text, with a line saying what was cut."""
    data = text.encode(errors="replace")
    if len(data) <= limit:
        return text
    half = limit // 2
    head = data[:half].decode(errors="replace")
    tail = data[-half:].decode(errors="replace")
    return f"{head}\n\n[... {len(data) - limit} bytes cut by gpu_check ...]\n\n{tail}"


def run(cmd, log_path, timeout, env=None, cwd=ROOT):
    """Runs cmd, its stdout and stderr into log_path (cut to LOG_LIMIT).  On
    timeout it is interrupted (SIGINT: pytest still writes its report), then
    killed.  Returns dict(returncode, timed_out, wall_s, tail)."""
    started = time.perf_counter()
    full_env = dict(os.environ, **(env or {}))
    raw_path = log_path + ".full"
    with open(raw_path, "w") as raw:
        raw.write("$ " + " ".join(cmd) + "\n")
        raw.flush()
        proc = subprocess.Popen(cmd, stdout=raw, stderr=subprocess.STDOUT, cwd=cwd, env=full_env,
                                start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, grace in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = proc.returncode
    with open(raw_path, errors="replace") as f:
        text = f.read()
    os.remove(raw_path)
    if timed_out:
        text += f"\n[gpu_check: stopped after its time limit of {timeout:.0f} s]\n"
    with open(log_path, "w") as f:
        f.write(cut(text))
    return dict(returncode=rc, timed_out=timed_out, wall_s=round(time.perf_counter() - started, 1),
                tail=text[-3000:])


def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def env_lines(env):
    """Markdown bullet lines for a summary."""
    gpu = env.get("gpu") or {}
    lines = [f"- date {env['date']}, git {env.get('git_commit') or '?'}"
             + (" (uncommitted changes)" if env.get("git_dirty") else ""),
             f"- device: {gpu.get('name', 'no CUDA GPU')}"
             + (f" (sm_{gpu['capability'].replace('.', '')}, {gpu['sm_count']} SMs)" if gpu else ""),
             f"- python {env['python']}, torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), "
             f"triton {env['triton']}",
             f"- nvcc: {env.get('nvcc') or 'not found'}; compute-sanitizer: {env.get('compute_sanitizer') or 'not found'}"]
    if env.get("rnn_ext_import_error"):
        lines.append(f"- **rnn_ext does not import**: {env['rnn_ext_import_error']}")
    return lines


def check_out_dir(out):
    """At most MAX_FILES files, at most 2 folders deep: what the device tool brings back."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs]
    if len(files) > MAX_FILES:
        raise SystemExit(f"gpu_check: {out} holds {len(files)} files, more than {MAX_FILES}")
    return files


def python():
    return sys.executable


def have(tool):
    return shutil.which(tool) is not None
