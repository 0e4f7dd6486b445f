"""python -m gpu_check <phase> --out DIR [--dry-run]  |  land DIR...  |  auto-table RESULT.json
(see gpu_check/__init__.py; `make gpu-check` builds the extension first)."""
import argparse
import datetime
import os
import shutil
import sys
import time

from . import bench, common

PHASES = ["test", "sanitize", "probe"] + [f"bench-{c}" for c in bench.CHUNKS]
RESULTS_DIR = os.path.join(common.ROOT, "benchmarks", "results")


def run_phase(phase, out, dry_run):
    os.makedirs(out, exist_ok=True)
    if phase == "first":
        from . import first

        return first.run(out, dry_run)
    if phase == "test":
        from . import test_phase

        return test_phase.run(out, dry_run)
    if phase == "sanitize":
        from . import sanitize

        return sanitize.run(out, dry_run)
    if phase == "probe":
        from . import probe

        return probe.run(out, dry_run)
    return bench.run(phase[len("bench-"):], out, dry_run)


def main_phase(args):
    phases = PHASES if args.phase == "all" else [args.phase]
    results = {}
    for phase in phases:
        # "all" gives each phase its own folder: each holds at most 8 files.
        out = os.path.join(args.out, phase) if args.phase == "all" else args.out
        started = time.perf_counter()
        ok = run_phase(phase, out, args.dry_run)
        common.check_out_dir(out)
        results[phase] = ok
        print(f"gpu_check {phase}: {'ok' if ok else 'FAILED'} in {time.perf_counter() - started:.0f} s; "
              f"summary {os.path.join(out, phase + '.md')}", flush=True)
    return 0 if all(results.values()) else 1


# -------------------------------------------------------------------- land ----
def land(dirs, results_dir=RESULTS_DIR, allow_cpu=False):
    """Copies a GPU run's phase files into benchmarks/results/: the bench
    chunks merged into one <device>_<date>.json/.md/.png (what
    `python -m benchmarks.readme` puts into the README), the other phases'
    files into gpu-check/<device>_<date>/.  Returns the paths written."""
    from benchmarks import report
    from benchmarks.runner import slug

    bench_results, others = [], []
    for d in dirs:
        for root, _, files in os.walk(d):
            if os.path.relpath(root, d).count(os.sep) > 1:
                continue
            found = {p for p, _ in bench.result_files(root)}
            for p, data in bench.result_files(root):
                bench_results.append(data)
            for f in files:
                path = os.path.join(root, f)
                stem = os.path.splitext(path)[0]
                if path in found or (stem + ".json") in found:
                    continue  # a chunk's own .md / .png: the merged result replaces them
                others.append(path)
    written = []
    devices = {r["meta"]["device_type"] for r in bench_results}
    if "cpu" in devices and not allow_cpu:
        raise SystemExit("gpu_check land: these are CPU (dry-run) results; benchmarks/results/ holds GPU runs only")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    device = "unknown-device"
    if bench_results:
        merged = bench.merge(bench_results)
        device = slug(merged["meta"]["device"])
        stamp = datetime.datetime.fromisoformat(merged["meta"]["date"]).strftime("%Y%m%d-%H%M%S")
        stem = os.path.join(results_dir, f"{device}_{stamp}")
        os.makedirs(results_dir, exist_ok=True)
        report.write_json(merged, stem + ".json")
        report.write_markdown(merged, stem + ".md")
        report.write_chart(merged, stem + ".png")
        written += [stem + ".json", stem + ".md", stem + ".png"]
    else:
        import json

        for path in others:
            if path.endswith(".json"):
                with open(path) as f:
                    gpu = (json.load(f).get("environment") or {}).get("gpu")
                if gpu:
                    device = slug(gpu["name"])
                    break
    if others:
        folder = os.path.join(results_dir, "gpu-check", f"{device}_{stamp}")
        os.makedirs(folder, exist_ok=True)
        for path in others:
            target = os.path.join(folder, os.path.basename(path))
            shutil.copyfile(path, target)
            written.append(target)
    return written


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "auto-table":
        from rnn_ext import backends

        from . import autotable

        p = argparse.ArgumentParser(prog="python -m gpu_check auto-table",
                                    description=autotable.__doc__.splitlines()[0])
        p.add_argument("result", help="a GPU result: benchmarks/results/<gpu>_<date>.json")
        p.add_argument("--out", default=backends.AUTO_TABLE_FILE)
        a = p.parse_args(argv[1:])
        table = autotable.write(a.result, a.out)
        print(f"{os.path.relpath(a.out)}: {len(table['points'])} points; {table['source']}")
        return 0
    if argv and argv[0] == "land":
        p = argparse.ArgumentParser(prog="python -m gpu_check land",
                                    description="copy a GPU run's results into benchmarks/results/")
        p.add_argument("dirs", nargs="+", help="the OUT folders of the phases")
        p.add_argument("--results-dir", default=RESULTS_DIR)
        p.add_argument("--allow-cpu", action="store_true", help="accept dry-run (CPU) results (for tests)")
        a = p.parse_args(argv[1:])
        for path in land(a.dirs, a.results_dir, a.allow_cpu):
            print(os.path.relpath(path))
        print("next: python -m benchmarks.readme (puts the newest result's table into README.md), then "
              "git add benchmarks/results README.md")
        return 0
    p = argparse.ArgumentParser(prog="python -m gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["first"] + PHASES + ["all"])
    p.add_argument("--out", required=True, help="folder for the phase's files (at most 8 per phase)")
    p.add_argument("--dry-run", action="store_true", help="what runs without a GPU (make test checks the kit)")
    return main_phase(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
