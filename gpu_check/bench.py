"""Phases "bench-<chunk>": the GPU benchmark grid (python -m benchmarks --grid
gpu) against cuDNN, in chunks that each end inside the time limit and
together cover the whole grid: every shape, LSTM and GRU, inference and
training (peak memory included), fp32 (TF32 off for cuBLAS and cuDNN
alike), fp16 and bf16.

A chunk is one dtype and one cell: 34 cases (LSTM: 17 shapes, projection
included; GRU: 16) x infer/train.  The runner's --deadline stops starting
cases after DEADLINE_S, so that a chunk slower than planned still ends in
time and lists the cases it did not run (run them with BENCH_CASES).

Files: bench-<chunk>.md (summary), bench-<chunk>.log, and the runner's
<device>_<date>.json, .md, .png.  `python -m gpu_check land` merges the
chunks' JSON into one result under benchmarks/results/.
"""
import glob
import json
import os

from . import common

DTYPES = ("fp32", "fp16", "bf16")
CELLS = ("lstm", "gru", "rnn")
CHUNKS = {f"{d}-{c}": dict(dtypes=d, cells=c) for d in DTYPES for c in CELLS}
DEADLINE_S = 390


def command(chunk, out, dry_run, cases=None):
    spec = CHUNKS[chunk]
    cmd = [common.python(), "-m", "benchmarks", "--dtypes", spec["dtypes"], "--cells", spec["cells"],
           "--modes", "infer,train", "--out", out, "--no-progress", "--deadline", str(DEADLINE_S)]
    if dry_run:
        # Two shapes of the quick grid on the CPU: checks the chunk's command,
        # the runner and the files in seconds.
        cmd += ["--grid", "quick", "--device", "cpu"]
        cases = cases or "fastrnns,proj"
    else:
        cmd += ["--grid", "gpu", "--device", "cuda", "--tf32", "off"]
    if cases:
        cmd += ["--cases", cases]
    return cmd


def result_files(out):
    """The runner's JSON results in `out` (newest last)."""
    found = []
    for path in glob.glob(os.path.join(out, "*.json")):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("schema") and "cases" in data:
            found.append((data["meta"].get("date", ""), path, data))
    return [(p, d) for _, p, d in sorted(found)]


def run(chunk, out, dry_run):
    env = common.environment()
    if not dry_run and not env["cuda_available"]:
        raise SystemExit("gpu_check: bench phases need a CUDA GPU (or DRY_RUN=1)")
    cases = os.environ.get("BENCH_CASES") or None
    cmd = command(chunk, out, dry_run, cases)
    before = {p for p, _ in result_files(out)}
    r = common.run(cmd, os.path.join(out, f"bench-{chunk}.log"), timeout=common.PHASE_BUDGET_S)
    new = [(p, d) for p, d in result_files(out) if p not in before]
    lines = [f"# gpu_check: bench-{chunk}" + (" (dry run: two shapes of the quick grid on the CPU)" if dry_run else ""), ""]
    lines += common.env_lines(env)
    lines += [f"- command: `{' '.join(cmd)}`", f"- wall {r['wall_s']} s, exit {r['returncode']}"
              + (" (stopped at the phase's limit)" if r["timed_out"] else ""), ""]
    ok = r["returncode"] == 0 and not r["timed_out"] and bool(new)
    if not new:
        lines += ["**No result file**: the benchmark did not finish; see the log.", "", "```",
                  r["tail"][-2000:], "```"]
    else:
        from benchmarks import report

        path, data = new[-1]
        not_run = [c["id"] for c in data["cases"]
                   if any("--deadline" in (x.get("error") or "") for x in c["results"].values())]
        failed = sorted({i for i, _, e in report.errors(data) if "--deadline" not in e})
        lines += [f"Result: `{os.path.basename(path)}` ({len(data['cases'])} cases).", ""]
        lines += [f"- {line}" for line in report.summary_lines(data, markdown=True)]
        if failed:
            lines += ["", f"**{len(failed)} cases with errors**: " + ", ".join(f"`{i}`" for i in failed)]
        if not_run:
            ok = False
            lines += ["", f"**{len(not_run)} cases not run** (the --deadline of {DEADLINE_S} s had passed); "
                      f"run them with BENCH_CASES=<shape patterns>: " + ", ".join(f"`{i}`" for i in not_run)]
    common.write_text(os.path.join(out, f"bench-{chunk}.md"), "\n".join(lines))
    return ok


# ------------------------------------------------------------------- merge ----
def merge(results):
    """One result from the chunks' results (same grid), for benchmarks/results/."""
    if not results:
        raise ValueError("no benchmark results to merge")
    grids = {r["meta"]["grid"] for r in results}
    if len(grids) != 1:
        raise ValueError(f"the results mix grids {sorted(grids)}")
    results = sorted(results, key=lambda r: r["meta"]["date"])
    merged = json.loads(json.dumps(results[-1]))
    meta = merged["meta"]
    seen, cases, notes = set(), [], []
    # The newest run of a case wins (a chunk rerun replaces the earlier one).
    for r in reversed(results):
        for c in r["cases"]:
            if c["id"] not in seen and not _not_run(c):
                seen.add(c["id"])
                cases.append(c)
    for r in results:
        for n in r["notes"]:
            if n not in notes:
                notes.append(n)
    order = {d: i for i, d in enumerate(DTYPES + ("fp64",))}
    cases.sort(key=lambda c: (order.get(c["dtype"], 9), c["shape"], c["cell"], c["mode"]))
    meta["dtypes"] = _union(r["meta"]["dtypes"] for r in results)
    meta["cells"] = _union(r["meta"]["cells"] for r in results)
    meta["modes"] = _union(r["meta"]["modes"] for r in results)
    meta["backends"] = {k: v for r in results for k, v in r["meta"]["backends"].items()}
    meta["matmul"]["flops_per_s"] = {k: v for r in results for k, v in r["meta"]["matmul"]["flops_per_s"].items()}
    meta["wall_s"] = sum(r["meta"]["wall_s"] or 0 for r in results)
    meta["argv"] = None
    meta["chunks"] = [dict(date=r["meta"]["date"], argv=r["meta"].get("argv"), git_commit=r["meta"]["git_commit"],
                           cases=len(r["cases"])) for r in results]
    commits = {r["meta"]["git_commit"] for r in results}
    if len(commits) > 1:
        notes.append("Merged from chunks run at different commits: " + ", ".join(sorted(c or "?" for c in commits)))
    notes.append(f"Merged by gpu_check from {len(results)} chunk runs ({len(cases)} cases).")
    merged["notes"], merged["cases"] = notes, cases
    return merged


def _not_run(case):
    return all("--deadline" in (r.get("error") or "") for r in case["results"].values())


def _union(lists):
    out = []
    for items in lists:
        for x in items:
            if x not in out:
                out.append(x)
    return out
