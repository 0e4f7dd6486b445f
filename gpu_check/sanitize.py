"""Phase "sanitize": smoke.py once plainly, then under compute-sanitizer's
memcheck, racecheck, synccheck and initcheck, each with its own time limit
so that the phase ends inside 8 minutes whatever a tool costs.

PyTorch's caching allocator hands out slices of large blocks, which hides an
out-of-bounds access inside a block from memcheck: the sanitized runs set
PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that each tensor is its own allocation.

Files: sanitize.md, sanitize.json, smoke.log, and one log per tool.
"""
import os
import re

from . import common

# Seconds per run: smoke alone, then each tool (racecheck is the slowest:
# it tracks every shared-memory access).
LIMITS = {"smoke": 60, "memcheck": 110, "racecheck": 110, "synccheck": 70, "initcheck": 70}
TOOL_FLAGS = {
    "memcheck": ["--leak-check", "full"],
    "racecheck": ["--racecheck-report", "all"],
    "synccheck": [],
    "initcheck": [],
}


def _smoke_counts(text):
    m = re.search(r"smoke: (\d+) passed, (\d+) failed", text)
    if m:
        return int(m.group(1)), int(m.group(2))
    return (len(re.findall(r"^PASS ", text, re.M)), len(re.findall(r"^FAIL ", text, re.M)))


def _sanitizer_errors(text):
    m = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    return int(m[-1]) if m else None


def run(out, dry_run):
    env = common.environment()
    smoke = [common.python(), "-m", "gpu_check.smoke"] + (["--device", "cpu"] if dry_run else [])
    runs = {}
    r = common.run(smoke, os.path.join(out, "smoke.log"), LIMITS["smoke"])
    with open(os.path.join(out, "smoke.log")) as f:
        r["passed"], r["failed"] = _smoke_counts(f.read())
    runs["smoke"] = r
    have_sanitizer = common.have("compute-sanitizer")
    for tool, flags in TOOL_FLAGS.items():
        if dry_run or not env["cuda_available"] or not have_sanitizer:
            why = "dry run" if dry_run else ("no CUDA GPU" if not env["cuda_available"] else "no compute-sanitizer")
            runs[tool] = dict(skipped=why)
            continue
        log = os.path.join(out, f"{tool}.log")
        cmd = ["compute-sanitizer", "--tool", tool, "--error-exitcode", "99", "--print-limit", "100",
               *flags, *smoke]
        r = common.run(cmd, log, LIMITS[tool], env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
        with open(log, errors="replace") as f:
            text = f.read()
        r["passed"], r["failed"] = _smoke_counts(text)
        r["sanitizer_errors"] = _sanitizer_errors(text)
        runs[tool] = r
    ok = all(r.get("skipped") or (r["returncode"] == 0 and not r["timed_out"]) for r in runs.values())
    for r in runs.values():
        r.pop("tail", None)
    common.write_json(os.path.join(out, "sanitize.json"),
                      dict(phase="sanitize", dry_run=dry_run, ok=ok, environment=env, runs=runs))

    lines = ["# gpu_check: sanitize" + (" (dry run: smoke.py on the CPU backends)" if dry_run else ""), ""]
    lines += common.env_lines(env) + ["", "| run | result | smoke cases passed / failed | sanitizer errors | wall s |",
                                      "| --- | --- | --- | --- | --- |"]
    for name, r in runs.items():
        if r.get("skipped"):
            lines.append(f"| {name} | skipped: {r['skipped']} | | | |")
            continue
        state = ("timed out" if r["timed_out"] else ("ok" if r["returncode"] == 0 else f"exit {r['returncode']}"))
        errs = r.get("sanitizer_errors")
        lines.append(f"| {name} | {state} | {r['passed']} / {r['failed']} | "
                     f"{'' if errs is None and name == 'smoke' else errs} | {r['wall_s']} |")
    lines += ["", f"**{'PASS' if ok else 'FAIL'}**" + ("" if ok else ": see the logs of the runs that are not ok "
                                                        "(FAIL lines of smoke.py, the sanitizer's reports)."),
              "", "A timed-out run stopped at its limit (seconds: "
              + ", ".join(f"{k} {v}" for k, v in LIMITS.items()) + "); the cases its log lists did run."]
    common.write_text(os.path.join(out, "sanitize.md"), "\n".join(lines))
    return ok
