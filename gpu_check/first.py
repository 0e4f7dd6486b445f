"""Phase "first": what a short GPU lease must bring back, in one command.

A lease is 15 minutes of device time all told (the machine's start, the
build and every command), so the first call cannot run the whole kit
(test, sanitize, probe and six bench chunks take far longer).  This phase
runs, in order of what matters most, each step under its own time limit:

  smoke      gpu_check.smoke on the compiled CUDA backends (stepwise and
             persistent, every dtype, cell and configuration) against fp64
  tests      every `cuda`-marked test (pytest -m cuda, in parallel with
             pytest-xdist and a per-test timeout where installed)
  bench      the issue's headline shapes (LSTM, fp16 and bf16, T = 1024,
             B = 1, 4, 16, H = 256-1024, inference and training) against
             cuDNN, for the stepwise CUDA backend, the persistent one
             (cuda:persistent) and Triton, the headline case first
  memcheck   compute-sanitizer memcheck over the persistent kernels' smoke
             cases (where compute-sanitizer runs)
  barriers   the probe phase's microbenchmarks alone (launch latency, grid,
             cluster and flag barriers): the per-step floor of the
             persistent kernels (benchmarks/NOTES.md)

Steps end at their limits (FIRST_LIMITS_S, about 6.5 minutes together), so
`make gpu-check PHASE=first` with its build fits one 10-minute command.
Files (8 at most, what the device tool brings back): first.md, first.json,
smoke.log, test.log, test-junit.xml, bench.log and the two benchmark runs'
<device>_<date>.json (`python -m gpu_check land` merges them into one
result with its table and chart, like the bench chunks').
"""
import glob
import os
import re

from . import bench, common, sanitize, test_phase

FIRST_LIMITS_S = {"smoke": 60, "tests": 120, "bench": 150, "memcheck": 50, "barriers": 40}
SMOKE_BACKENDS = "cuda,cuda:persistent"
BENCH_BACKENDS = "cuda,cuda:persistent,triton"
# The targets, in two runs: its headline case (B = 16, T = 1024,
# H = 768) first, then the rest of the latency grid while time is left (the
# runner orders a run's cases by the grid, so one run cannot put it first).
BENCH_RUNS = ("latency-b16-h768", "latency-b16-h256,latency-b16-h512,latency-b16-h1024,latency-b4-*,latency-b1-*")
DRY_RUN_BENCH = ("latency-b1-*", "fastrnns")  # the quick grid's stand-ins, on the CPU
BENCH_MARGIN_S = 30  # no case starts later than this before the step's limit


def smoke_command(dry_run):
    if dry_run:
        return [common.python(), "-m", "gpu_check.smoke", "--device", "cpu", "--backends", "cpu",
                "--dtypes", "fp64"]
    return [common.python(), "-m", "gpu_check.smoke", "--device", "cuda", "--backends", SMOKE_BACKENDS]


def test_command(junit, dry_run, env):
    cmd = test_phase.pytest_command(junit, dry_run, env)
    if not dry_run:
        cmd += ["-m", "cuda"]
    return cmd


def bench_command(out, dry_run, cases, deadline):
    cmd = [common.python(), "-m", "benchmarks", "--cells", "lstm", "--modes", "infer,train",
           "--out", out, "--no-progress", "--deadline", str(max(1, int(deadline)))]
    if dry_run:
        return cmd + ["--grid", "quick", "--device", "cpu", "--cases", DRY_RUN_BENCH[BENCH_RUNS.index(cases)],
                      "--backends", "cpu,cpu:mkl"]
    return cmd + ["--grid", "gpu", "--device", "cuda", "--tf32", "off", "--dtypes", "bf16,fp16",
                  "--backends", BENCH_BACKENDS, "--cases", cases]


def memcheck_command(dry_run):
    smoke = smoke_command(dry_run)
    if not dry_run:
        smoke = smoke[:-1] + ["cuda:persistent", "--dtypes", "fp32,bf16"]
    return ["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "1"] + smoke


def run(out, dry_run):
    env = common.environment()
    data = dict(phase="first", dry_run=dry_run, environment=env, steps={})
    lines = ["# gpu_check: first" + (" (dry run: CPU stand-ins for each step)" if dry_run else ""), ""]
    lines += common.env_lines(env) + [""]
    if not dry_run and not env["cuda_available"]:
        raise SystemExit("gpu_check: phase first needs a CUDA GPU (or DRY_RUN=1)")

    # smoke: the compiled CUDA backends against fp64.
    r = common.run(smoke_command(dry_run), os.path.join(out, "smoke.log"), timeout=FIRST_LIMITS_S["smoke"])
    with open(os.path.join(out, "smoke.log"), errors="replace") as f:
        text = f.read()
    passed, failed = sanitize._smoke_counts(text)
    failures = re.findall(r"^FAIL (.*)$", text, re.M)
    ok_smoke = r["returncode"] == 0 and not r["timed_out"]
    data["steps"]["smoke"] = dict(ok=ok_smoke, passed=passed, failed=failed, failures=failures[:60], **_r(r))
    lines += [f"## smoke: {'PASS' if ok_smoke else 'FAIL'} ({passed} passed, {failed} failed, {r['wall_s']} s"
              + (", stopped at its limit" if r["timed_out"] else "") + ")", ""]
    lines += [f"- FAIL {x}" for x in failures[:20]] + ([""] if failures else [])

    # tests: every cuda-marked test.
    junit = os.path.join(out, "test-junit.xml")
    cmd = test_command(junit, dry_run, env)
    r = common.run(cmd, os.path.join(out, "test.log"), timeout=FIRST_LIMITS_S["tests"])
    report = test_phase.parse_junit(junit)
    ok_tests = r["returncode"] == 0 and not r["timed_out"]
    data["steps"]["tests"] = dict(ok=ok_tests, command=cmd, junit=report, **_r(r))
    if report is None:
        lines += [f"## tests: FAIL (no JUnit report; {r['wall_s']} s)", "", "```", r["tail"][-1500:], "```", ""]
    else:
        c = report["counts"]
        lines += [f"## tests (-m cuda): {'PASS' if ok_tests else 'FAIL'} ({c['passed']} passed, {c['failures']} "
                  f"failed, {c['errors']} errors, {c['skipped']} skipped; {r['wall_s']} s"
                  + (", stopped at its limit" if r["timed_out"] else "") + ")", ""]
        lines += [f"- `{f['test']}`: {(f['message'].splitlines() or [''])[0][:200]}" for f in report["failures"][:25]]
        lines += [""] if report["failures"] else []

    # bench: the headline shapes against cuDNN.
    before = {p for p, _ in bench.result_files(out)}
    left, logs, runs = FIRST_LIMITS_S["bench"], [], []
    for cases in BENCH_RUNS:
        if left <= BENCH_MARGIN_S:
            break
        log = os.path.join(out, f"bench{len(runs)}.log")
        r = common.run(bench_command(out, dry_run, cases, left - BENCH_MARGIN_S), log, timeout=left)
        left -= r["wall_s"]
        with open(log, errors="replace") as f:
            logs.append(f.read())
        os.remove(log)
        runs.append(dict(cases=cases, **_r(r)))
    common.write_text(os.path.join(out, "bench.log"), common.cut("\n".join(logs)))
    new = [(p, d) for p, d in bench.result_files(out) if p not in before]
    for path in glob.glob(os.path.join(out, "*.png")) + [p[:-5] + ".md" for p, _ in new]:
        if os.path.exists(path):
            os.remove(path)  # `land` writes the merged table and chart; the device tool brings back 8 files
    ok_bench = len(new) == len(BENCH_RUNS) and all(x["returncode"] == 0 and not x["timed_out"] for x in runs)
    data["steps"]["bench"] = dict(ok=ok_bench, results=[os.path.basename(p) for p, _ in new], runs=runs)
    lines += [f"## bench: {'PASS' if ok_bench else 'FAIL'} ({FIRST_LIMITS_S['bench'] - left:.0f} s)", ""]
    if new:
        from benchmarks import report as bench_report

        merged = bench.merge([d for _, d in new])
        lines += [f"- {x}" for x in bench_report.summary_lines(merged, markdown=True)] + [""]
    else:
        lines += ["No result file; see bench.log.", ""]

    # memcheck: the persistent kernels under compute-sanitizer (its log goes
    # into first.json: the file count is full).
    if not dry_run and common.have("compute-sanitizer"):
        log = os.path.join(out, "memcheck.log")
        # Each tensor its own allocation, so that memcheck sees accesses past
        # its end (as in the sanitize phase).
        r = common.run(memcheck_command(dry_run), log, timeout=FIRST_LIMITS_S["memcheck"],
                       env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
        with open(log, errors="replace") as f:
            text = f.read()
        os.remove(log)
        errors = sanitize._sanitizer_errors(text)
        ok_mem = r["returncode"] == 0 and not r["timed_out"] and errors == 0
        data["steps"]["memcheck"] = dict(ok=ok_mem, errors=errors, log_tail=common.cut(text, 48 * 1024), **_r(r))
        lines += [f"## memcheck (cuda:persistent smoke): {'PASS' if ok_mem else 'FAIL'} ({errors} errors, "
                  f"{r['wall_s']} s" + (", stopped at its limit" if r["timed_out"] else "") + ")", ""]
    else:
        why = "a dry run" if dry_run else "compute-sanitizer not found"
        data["steps"]["memcheck"] = dict(ok=None, skipped=why)
        lines += [f"## memcheck: not run ({why})", ""]

    # barriers: the probe's microbenchmarks, into first.json (no file of their own).
    if dry_run:
        data["steps"]["barriers"] = dict(ok=None, skipped="a dry run")
        lines += ["## barriers: not run (a dry run)", ""]
    else:
        data["steps"]["barriers"] = _barriers(env)
        mb = data["steps"]["barriers"].get("microbenchmarks") or {}
        lines += ["## barriers (median us)", ""]
        lines += [f"- {name}: " + (f"{r['us']:.2f} us" if isinstance(r, dict) and "us" in r else str(r))
                  for name, r in mb.items() if name != "launch"]
        lines += [""]

    ok = (ok_smoke and ok_tests and ok_bench and data["steps"]["memcheck"]["ok"] is not False
          and data["steps"]["barriers"]["ok"] is not False)
    data["ok"] = ok
    lines += ["Next: the other phases (test, sanitize, probe, bench-<chunk>) where time is left; "
              "`python -m gpu_check land` on this folder."]
    common.write_json(os.path.join(out, "first.json"), data)
    common.write_text(os.path.join(out, "first.md"), "\n".join(lines))
    return ok


def _barriers(env):
    """The probe's CUDA microbenchmarks, in a child process with a time
    limit (a hung barrier must not take the lease with it)."""
    import json
    import subprocess
    import sys

    code = ("import json, sys, torch; from gpu_check import probe; log = []; "
            "p = torch.cuda.get_device_properties(0); "
            "lib = probe.build(f'{p.major}{p.minor}', log); "
            "print('RESULT ' + json.dumps(probe.microbenchmarks(lib, p.multi_processor_count)))")
    try:
        r = subprocess.run([sys.executable, "-c", code], cwd=common.ROOT, capture_output=True, text=True,
                           timeout=FIRST_LIMITS_S["barriers"])
    except subprocess.TimeoutExpired:
        return dict(ok=False, error=f"stopped after {FIRST_LIMITS_S['barriers']} s")
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            mb = json.loads(line[len("RESULT "):])
            return dict(ok=not any(isinstance(v, dict) and "error" in v for v in mb.values()), microbenchmarks=mb)
    return dict(ok=False, error=(r.stdout + r.stderr)[-2000:])


def _r(result):
    return dict(returncode=result["returncode"], timed_out=result["timed_out"], wall_s=result["wall_s"])
