"""The GPU bring-up kit (gpu_check/, `make gpu-check`) checked without a GPU:
the dry run of every phase through make, the files each phase leaves (at
most 8, summaries that say PASS), landing the results under
benchmarks/results/ and the README table rendered from them, the probe's
CUDA microkernels compiled for sm_90, and the kit's report helpers."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gpu_check import __main__ as kit  # noqa: E402
from gpu_check import bench, common, first, smoke, test_phase  # noqa: E402


def _dry_run_env():
    env = dict(os.environ)
    # The kit's subprocesses decide the device themselves, as on a GPU machine.
    env.pop("TRITON_INTERPRET", None)
    return env


# Session scope and one xdist group: under pytest-xdist a module fixture is
# made again whenever a worker comes back to the module after another one
# (and on each worker that runs one of its tests); this one takes minutes.
@pytest.fixture(scope="session")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    if shutil.which("make"):
        cmd = ["make", "--no-print-directory", "gpu-check", "PHASE=all", f"OUT={out}", "DRY_RUN=1",
               f"PYTHON={sys.executable}"]
    else:
        cmd = [sys.executable, "-m", "gpu_check", "all", "--out", str(out), "--dry-run"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_dry_run_env(), timeout=900)
    return out, proc


@pytest.mark.xdist_group("gpu_check_dry_run")
def test_dry_run_of_every_phase(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted(kit.PHASES)
    for phase in kit.PHASES:
        files = os.listdir(out / phase)
        assert len(files) <= common.MAX_FILES, (phase, files)
        summary = (out / phase / f"{phase}.md").read_text()
        assert summary.startswith(f"# gpu_check: {phase}"), summary[:200]
        assert "dry run" in summary
        assert f"gpu_check {phase}: ok" in proc.stdout


@pytest.mark.xdist_group("gpu_check_dry_run")
def test_dry_run_test_phase_reports_junit(dry_run):
    out, _ = dry_run
    data = json.loads((out / "test" / "test.json").read_text())
    counts = data["junit"]["counts"]
    assert counts["passed"] > 0 and counts["failures"] == 0 and counts["errors"] == 0
    if not torch.cuda.is_available():
        assert counts["skipped"] > 0  # the cuda tests, skipped without a GPU
    assert data["environment"]["torch"] and "git_commit" in data["environment"]
    assert (out / "test" / "test-junit.xml").exists()


@pytest.mark.xdist_group("gpu_check_dry_run")
def test_dry_run_smoke_and_probe(dry_run):
    out, _ = dry_run
    runs = json.loads((out / "sanitize" / "sanitize.json").read_text())["runs"]
    cases = sum(len(list(smoke.configs(c))) for c in smoke.CELLS) * 2  # fp64, fp32 on the cpu backend
    assert runs["smoke"]["passed"] == cases and runs["smoke"]["failed"] == 0
    assert all(runs[t]["skipped"] == "dry run" for t in ("memcheck", "racecheck", "synccheck", "initcheck"))
    probe = json.loads((out / "probe" / "probe.json").read_text())
    rows = probe["host_cost"]
    assert {r["backend"] for r in rows} == {"torch.nn", "cpu"}
    assert all("error" not in r and r["host_us_per_step"] > 0 for r in rows)


@pytest.mark.xdist_group("gpu_check_dry_run")
def test_land_merges_the_chunks_into_one_result(dry_run, tmp_path, monkeypatch):
    out, _ = dry_run
    with pytest.raises(SystemExit, match="CPU"):
        kit.land([str(out)], str(tmp_path))
    written = kit.land([str(out)], str(tmp_path), allow_cpu=True)
    merged_json = [p for p in written if p.endswith(".json") and os.path.dirname(p) == str(tmp_path)]
    assert len(merged_json) == 1
    merged = json.loads(open(merged_json[0]).read())
    assert merged["meta"]["dtypes"] == ["fp32", "fp16", "bf16"]
    assert sorted(merged["meta"]["cells"]) == sorted(bench.CELLS)
    assert len(merged["meta"]["chunks"]) == len(bench.CHUNKS)
    ids = [c["id"] for c in merged["cases"]]
    assert len(ids) == len(set(ids))
    for d in ("fp32", "fp16", "bf16"):
        assert f"fastrnns/gru/train/{d}" in ids and f"proj/lstm/infer/{d}" in ids
    # The other phases' files go to gpu-check/<device>_<date>/, not beside
    # the results that benchmarks.readme reads.
    copied = {os.path.basename(p) for p in written if "gpu-check" in p}
    assert {"test.md", "test-junit.xml", "sanitize.md", "probe.json"} <= copied
    # As a GPU result, it is what `python -m benchmarks.readme` renders.
    from benchmarks import readme

    merged["meta"]["device_type"] = "cuda"
    with open(merged_json[0], "w") as f:
        json.dump(merged, f)
    body = readme.render(str(tmp_path))
    assert os.path.basename(merged_json[0]) in body
    assert "bf16" in body and "fp16" in body


def test_dry_run_of_the_first_phase_and_landing_it(tmp_path):
    # The phase for a short lease: one folder of at most 8 files, every step
    # reported, and its two benchmark runs landed as one result.
    out = tmp_path / "first"
    proc = subprocess.run([sys.executable, "-m", "gpu_check", "first", "--out", str(out), "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, env=_dry_run_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = common.check_out_dir(str(out))
    assert len(files) <= common.MAX_FILES
    data = json.loads((out / "first.json").read_text())
    assert data["ok"] and set(data["steps"]) == {"smoke", "tests", "bench", "memcheck", "barriers"}
    assert data["steps"]["smoke"]["passed"] > 0 and data["steps"]["smoke"]["failed"] == 0
    assert data["steps"]["tests"]["junit"]["counts"]["passed"] > 0
    assert len(data["steps"]["bench"]["results"]) == len(first.BENCH_RUNS)
    summary = (out / "first.md").read_text()
    assert summary.startswith("# gpu_check: first (dry run") and "## bench: PASS" in summary
    written = kit.land([str(out)], str(tmp_path / "results"), allow_cpu=True)
    merged = [p for p in written if p.endswith(".json") and "gpu-check" not in p]
    assert len(merged) == 1
    ids = [c["id"] for c in json.loads(open(merged[0]).read())["cases"]]
    assert any(i.startswith("latency-b1-") for i in ids) and any(i.startswith("fastrnns/") for i in ids)
    assert {"first.md", "smoke.log", "test-junit.xml"} <= {os.path.basename(p) for p in written}


def test_first_phase_commands_on_a_gpu():
    cmd = first.bench_command("/tmp/x", False, first.BENCH_RUNS[0], 100)
    assert cmd[cmd.index("--cases") + 1] == "latency-b16-h768"
    assert "cuda:persistent" in cmd[cmd.index("--backends") + 1].split(",")
    assert cmd[cmd.index("--dtypes") + 1] == "bf16,fp16" and cmd[cmd.index("--tf32") + 1] == "off"
    assert first.smoke_command(False)[-1] == first.SMOKE_BACKENDS
    env = dict(pytest_xdist="3", pytest_timeout="2")
    assert first.test_command("/tmp/j.xml", False, env)[-2:] == ["-m", "cuda"]
    assert first.memcheck_command(False)[:2] == ["compute-sanitizer", "--tool"]
    # Its steps fit one 10-minute command with a build of a few minutes.
    assert sum(first.FIRST_LIMITS_S.values()) <= 420
    if not torch.cuda.is_available():  # the barrier step reports, rather than raises, what fails
        r = first._barriers({})
        assert r["ok"] is False and r["error"]


def test_chunks_cover_the_gpu_grid():
    """Every case of `python -m benchmarks --grid gpu` is in exactly one chunk."""
    from benchmarks import cases as C

    shapes = C.grid_shapes("gpu")
    everything = {c.id for c in C.build_cases(shapes, C.CELLS, C.MODES, ["fp32", "fp16", "bf16"])}
    seen = []
    for spec in bench.CHUNKS.values():
        seen += [c.id for c in C.build_cases(shapes, spec["cells"].split(","), C.MODES, spec["dtypes"].split(","))]
    assert len(seen) == len(set(seen)) and set(seen) == everything
    cmd = bench.command("fp32-lstm", "/tmp/x", dry_run=False)
    assert cmd[cmd.index("--grid") + 1] == "gpu" and cmd[cmd.index("--tf32") + 1] == "off"
    assert "--deadline" in cmd


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_probe_kernels_compile_for_sm90(tmp_path):
    from gpu_check import probe

    proc = subprocess.run(probe.nvcc_command("90", str(tmp_path / "probe.so")), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "probe.so").stat().st_size > 0


def test_probe_kernels_source_has_no_torch():
    from gpu_check import probe

    src = open(probe.SOURCE).read()
    assert "torch" not in src.replace("no PyTorch", "") and "#include <cuda_runtime.h>" in src


def test_parse_junit_failures_and_counts(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.a" name="t1" time="0.5"/>'
        '<testcase classname="tests.a" name="t2" time="2.0"><failure message="assert 1 == 2">trace</failure></testcase>'
        '<testcase classname="tests.b" name="t3" time="0.1"><skipped message="needs a CUDA GPU"/></testcase>'
        '<testcase classname="tests.b" name="t4" time="0.1"><error message="boom"/></testcase>'
        '</testsuite></testsuites>')
    r = test_phase.parse_junit(str(xml))
    assert r["counts"] == dict(tests=4, passed=1, failures=1, errors=1, skipped=1)
    assert r["failures"][0]["test"] == "tests.a::t2" and "assert 1 == 2" in r["failures"][0]["message"]
    assert r["slowest"][0] == dict(test="tests.a::t2", seconds=2.0)
    assert test_phase.parse_junit(str(tmp_path / "missing.xml")) is None


def test_pytest_command_degrades_without_xdist_and_timeout():
    env = dict(pytest_xdist=None, pytest_timeout=None)
    cmd = test_phase.pytest_command("j.xml", False, env)
    assert "-n" not in cmd and not any(a.startswith("--timeout") for a in cmd) and "tests" in cmd
    cmd = test_phase.pytest_command("j.xml", False, dict(pytest_xdist="3.6", pytest_timeout="2.3"), workers=16)
    assert cmd[cmd.index("-n") + 1] == "16" and f"--timeout={test_phase.PER_TEST_TIMEOUT_S}" in cmd


def test_logs_are_cut_and_runs_are_stopped_in_time(tmp_path):
    text = "x" * (common.LOG_LIMIT * 3)
    cut = common.cut(text)
    assert len(cut.encode()) < common.LOG_LIMIT + 200 and "bytes cut by gpu_check" in cut
    r = common.run([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                   str(tmp_path / "x.log"), timeout=2)
    assert r["timed_out"] and r["wall_s"] < 50
    log = (tmp_path / "x.log").read_text()
    assert "started" in log and "stopped after its time limit" in log


def test_make_gpu_check_usage_error():
    if not shutil.which("make"):
        pytest.skip("needs make")
    proc = subprocess.run(["make", "--no-print-directory", "gpu-check", "PHASE=nope", "OUT=/tmp/x"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "usage: make gpu-check" in proc.stdout and "bench-bf16-gru" in proc.stdout
