"""Phase "test": devices and versions, then the whole pytest suite (not only
-m cuda: on a GPU the unmarked Triton tests run compiled), in parallel with
pytest-xdist and a per-test timeout with pytest-timeout where they are
installed (the GPU machine has both; without them it runs serially, and
only the phase's own time limit applies).

Files: test.md (summary), test.json (environment, counts, failures,
slowest tests), test-junit.xml, test.log (pytest's output, cut).
"""
import os
import xml.etree.ElementTree as ET

from . import common

PER_TEST_TIMEOUT_S = 300
# What a dry run (no GPU) runs instead of the whole suite: enough to produce
# a real JUnit report, passing and skipped tests included, in seconds.
DRY_RUN_TESTS = ["tests/test_ops_errors.py", "tests/test_cuda.py"]


def pytest_command(junit, dry_run, env, workers=None):
    # A module that fails to import (a package the GPU machine's image
    # lacks) is reported as an error; the rest still runs.
    cmd = [common.python(), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
           f"--junitxml={junit}", "--durations=25", "--continue-on-collection-errors"]
    cmd += DRY_RUN_TESTS if dry_run else ["tests"]
    if env.get("pytest_xdist") and not dry_run:
        # loadgroup: test by test, except the groups that share a costly fixture.
        cmd += ["-n", str(workers or min(16, os.cpu_count() or 1)), "--dist", "loadgroup"]
    if env.get("pytest_timeout"):
        cmd += [f"--timeout={PER_TEST_TIMEOUT_S}"]
    return cmd


def parse_junit(path):
    """Counts, failures (name and the message's first lines) and the slowest tests."""
    if not os.path.exists(path):
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = dict(tests=0, passed=0, failures=0, errors=0, skipped=0)
    failures, times = [], []
    for suite in suites:
        for case in suite.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            counts["tests"] += 1
            times.append((float(case.get("time") or 0), name))
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "failures" if child.tag == "failure" else "errors"
                    text = (child.get("message") or "") + "\n" + (child.text or "")
                    failures.append(dict(test=name, kind=child.tag, message=text.strip()[:1500]))
                elif child.tag == "skipped":
                    outcome = "skipped"
            counts[outcome] += 1
    times.sort(reverse=True)
    return dict(counts=counts, failures=failures,
                slowest=[dict(test=n, seconds=round(t, 2)) for t, n in times[:15]])


def run(out, dry_run):
    env = common.environment()
    junit = os.path.join(out, "test-junit.xml")
    cmd = pytest_command(junit, dry_run, env)
    result = common.run(cmd, os.path.join(out, "test.log"), timeout=common.PHASE_BUDGET_S)
    report = parse_junit(junit)
    ok = result["returncode"] == 0 and not result["timed_out"]
    data = dict(phase="test", dry_run=dry_run, ok=ok, environment=env, command=cmd,
                returncode=result["returncode"], timed_out=result["timed_out"], wall_s=result["wall_s"],
                junit=report)
    common.write_json(os.path.join(out, "test.json"), data)

    lines = ["# gpu_check: test" + (" (dry run: a few test files, no GPU)" if dry_run else ""), ""]
    lines += common.env_lines(env)
    parallel = "in parallel (pytest-xdist)" if "-n" in cmd else "serially (no pytest-xdist here)"
    timeout = (f"per-test timeout {PER_TEST_TIMEOUT_S} s" if env.get("pytest_timeout")
               else "no per-test timeout (no pytest-timeout here)")
    lines += [f"- pytest {parallel}, {timeout}; wall {result['wall_s']} s"
              + (f", **stopped at the phase's limit of {common.PHASE_BUDGET_S} s**" if result["timed_out"] else ""),
              ""]
    if report is None:
        lines += ["**No JUnit report**: pytest did not get far enough to write one; see test.log.", "",
                  "```", result["tail"][-2000:], "```"]
    else:
        c = report["counts"]
        lines += [f"**{'PASS' if ok else 'FAIL'}**: {c['passed']} passed, {c['failures']} failed, "
                  f"{c['errors']} errors, {c['skipped']} skipped, of {c['tests']}.", ""]
        if report["failures"]:
            lines += ["## Failures", ""]
            for f in report["failures"][:40]:
                first = f["message"].splitlines()[0][:300] if f["message"] else ""
                lines.append(f"- `{f['test']}` ({f['kind']}): {first}")
            if len(report["failures"]) > 40:
                lines.append(f"- ... {len(report['failures']) - 40} more in test.json")
            lines.append("")
        lines += ["## Slowest tests", ""] + [f"- {s['seconds']} s `{s['test']}`" for s in report["slowest"][:10]]
    common.write_text(os.path.join(out, "test.md"), "\n".join(lines))
    return ok
