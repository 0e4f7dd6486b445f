"""Renders the latest committed GPU result (benchmarks/results/*.json) into
the README's "Benchmarks" section, between the markers below.

    python -m benchmarks.readme           rewrite that part of README.md
    python -m benchmarks.readme --check   exit 1 if README.md is out of date

Only result files whose device is a GPU count; the newest by date wins.
With none, the section says that no GPU results are recorded yet, so the
README never shows a number that no committed result file holds.
"""
import argparse
import glob
import json
import os
import sys

from . import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
BEGIN = "<!-- benchmarks:results:begin (python -m benchmarks.readme writes this part) -->"
END = "<!-- benchmarks:results:end -->"


def latest_gpu_result(results_dir=RESULTS_DIR):
    """(path, result) of the newest GPU result, or (None, None)."""
    found = []
    for path in glob.glob(os.path.join(results_dir, "*.json")):
        with open(path) as f:
            result = json.load(f)
        meta = result.get("meta", {})
        if meta.get("device_type") == "cuda":
            found.append((meta.get("date", ""), os.path.basename(path), path, result))
    if not found:
        return None, None
    _, _, path, result = max(found)
    return path, result


def render(results_dir=RESULTS_DIR):
    """The text between the markers."""
    path, result = latest_gpu_result(results_dir)
    if result is None:
        return ("No GPU results are recorded yet: `benchmarks/results/` holds no GPU run, so "
                "there is no table here.  The CUDA and Triton kernels have not been timed "
                "against cuDNN.")
    rel = os.path.relpath(path, ROOT) if os.path.isabs(path) else path
    lines = [f"Latest GPU results, from [`{os.path.basename(path)}`]({rel}):", ""]
    lines += [f"- {line}" for line in report.meta_lines(result)]
    lines += [f"- {n}" for n in result["notes"]]
    lines += [f"- {line}" for line in report.summary_lines(result, markdown=True)]
    lines += ["", report.LEGEND, "", "Shapes: " + "; ".join(
        f"`{k}` {v}" for k, v in report.shapes_legend(result).items()) + ".", ""]
    lines.append(report.markdown_table(result))
    return "\n".join(lines)


def splice(text, body):
    """text with the part between the markers replaced by body."""
    try:
        start = text.index(BEGIN) + len(BEGIN)
        end = text.index(END, start)
    except ValueError:
        raise SystemExit(f"benchmarks.readme: README.md lacks the markers {BEGIN!r} ... {END!r}")
    return text[:start] + "\n" + body + "\n" + text[end:]


def current(text):
    start = text.index(BEGIN) + len(BEGIN)
    return text[start:text.index(END, start)].strip("\n")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.readme", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    p.add_argument("--readme", default=README)
    p.add_argument("--results", default=RESULTS_DIR)
    args = p.parse_args(argv)
    with open(args.readme) as f:
        text = f.read()
    new = splice(text, render(args.results))
    if args.check:
        if new != text:
            print("README.md's benchmark results are out of date: run python -m benchmarks.readme")
            return 1
        print("README.md's benchmark results are up to date")
        return 0
    if new != text:
        with open(args.readme, "w") as f:
            f.write(new)
        print("README.md updated")
    else:
        print("README.md already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
