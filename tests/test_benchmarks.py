"""The benchmark harness (python -m benchmarks) on the CPU, quick grid: that
it runs, and that its outputs (JSON, terminal and Markdown tables, PNG) are
well formed and agree with each other.  Not how fast anything is."""
import contextlib
import io
import json
import math
import os
import re
import statistics
import struct
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cases as C  # noqa: E402
from benchmarks import readme, report, runner, timing  # noqa: E402

QUICK = ["--quick", "--device", "cpu", "--threads", "1", "--budget", "0", "--min-reps", "2",
         "--max-reps", "3"]


def run_main(argv):
    """runner.main in this process, with its stdout and torch's thread count
    kept from leaking: (paths, stdout)."""
    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            paths = runner.main(argv)
    finally:
        torch.set_num_threads(threads)
    return paths, out.getvalue(), err.getvalue()


# Session scope and one xdist group: made once, on one worker.
@pytest.fixture(scope="session")
def quick(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    paths, stdout, stderr = run_main(QUICK + ["--out", str(folder)])
    with open(paths["json"]) as f:
        result = json.load(f)
    return {"paths": paths, "stdout": stdout, "stderr": stderr, "result": result, "folder": folder}


def expected_ids():
    shapes = C.grid_shapes("quick")
    return [c.id for c in C.build_cases(shapes, C.CELLS, C.MODES, ["fp32"])]


# ------------------------------------------------------------------ JSON --
@pytest.mark.xdist_group("bench_quick")
def test_outputs_written_in_out_folder(quick):
    paths = quick["paths"]
    assert set(paths) == {"json", "md", "png"}
    for path in paths.values():
        assert os.path.dirname(path) == str(quick["folder"])
        assert os.path.getsize(path) > 0
    stem = os.path.basename(paths["json"])[:-len(".json")]
    assert re.fullmatch(r"cpu-[a-z0-9-]+_\d{8}-\d{6}", stem), stem


@pytest.mark.xdist_group("bench_quick")
def test_json_meta(quick):
    meta = quick["result"]["meta"]
    assert meta["device_type"] == "cpu"
    assert isinstance(meta["device"], str) and meta["device"]
    for lib in ("torch", "triton", "cuda", "rnn_ext", "python"):
        assert lib in meta["versions"]
    assert meta["versions"]["torch"] == torch.__version__
    import rnn_ext
    assert meta["versions"]["rnn_ext"] == rnn_ext.__version__
    assert meta["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", meta["git_commit"])
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", meta["date"])
    assert meta["grid"] == "quick"
    assert meta["torch_threads"] == 1
    assert meta["matmul"]["flops_per_s"]["fp32"] > 0
    assert meta["wall_s"] > 0
    assert meta["backends"]["fp32"]["backends"] == ["cpu"]
    assert "cuda" in meta["backends"]["fp32"]["skipped"]


@pytest.mark.xdist_group("bench_quick")
def test_json_has_every_case_of_the_grid(quick):
    ids = [c["id"] for c in quick["result"]["cases"]]
    assert ids == expected_ids()
    assert not any(i.startswith("proj/gru") for i in ids)  # proj_size is LSTM only


@pytest.mark.xdist_group("bench_quick")
def test_json_case_figures(quick):
    for case in quick["result"]["cases"]:
        shape = C.Shape(**case["sizes"])
        assert case["flops"] == C.flops(shape, case["cell"], case["mode"]) > 0
        assert case["torch_path"] in ("oneDNN", "native")
        assert case["input_sets"] >= 2
        rate = case["matmul_flops_per_s"]
        assert rate == quick["result"]["meta"]["matmul"]["flops_per_s"][case["dtype"]]
        assert math.isclose(case["floor_s"], case["flops"] / rate, rel_tol=1e-12)
        assert set(case["results"]) == {"torch.nn", "rnn_ext.cpu"}
        base = case["results"]["torch.nn"]["median_s"]
        for name, r in case["results"].items():
            assert r["error"] is None, (case["id"], name, r["error"])
            assert isinstance(r["reps"], int) and 2 <= r["reps"] <= 3
            assert 0 < r["min_s"] <= r["q1_s"] <= r["median_s"] <= r["q3_s"] <= r["max_s"]
            assert len(r["samples_s"]) == r["reps"]
            assert r["median_s"] == statistics.median(r["samples_s"])
            assert (r["min_s"], r["max_s"]) == (min(r["samples_s"]), max(r["samples_s"]))
            assert math.isclose(r["floor_ratio"], r["median_s"] / case["floor_s"], rel_tol=1e-12)
            assert r["peak_mem_bytes"] is None and r["step_mem_bytes"] is None  # CPU: not measured
            if name != "torch.nn":
                assert r["speedup"] > 0
                assert math.isclose(r["speedup"], base / r["median_s"], rel_tol=1e-12)
                assert 0 <= r["max_abs_diff"] < 1e-3  # same weights, same numbers


@pytest.mark.xdist_group("bench_quick")
def test_json_is_strict(quick):
    with open(quick["paths"]["json"]) as f:
        text = f.read()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


@pytest.mark.xdist_group("bench_quick")
def test_notes_say_cpu_memory_not_measured(quick):
    notes = " ".join(quick["result"]["notes"])
    assert "not measured" in notes
    assert "Quick grid" in notes


# ---------------------------------------------------------------- tables --
def markdown_rows(text):
    """Rows of the Markdown table (header, separator excluded)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert re.fullmatch(r"\|( -+:? \|)+", lines[1]), lines[1]
    return lines[0], [[c.strip() for c in line.strip("| ").split(" | ")] for line in lines[2:]]


@pytest.mark.xdist_group("bench_quick")
def test_markdown_table_rows_match_cases(quick):
    with open(quick["paths"]["md"]) as f:
        text = f.read()
    header, rows = markdown_rows(text)
    result = quick["result"]
    assert len(rows) == len(result["cases"])
    headers = [h.strip() for h in header.strip("| ").split(" | ")]
    col = {h: i for i, h in enumerate(headers)}
    for row, case in zip(rows, result["cases"]):
        assert len(row) == len(headers)
        assert row[:4] == [case["shape"], case["cell"], case["mode"], case["dtype"]]
        assert row[col["torch.nn ms"]] == report.fmt_ms(case["results"]["torch.nn"]["median_s"])
        r = case["results"]["rnn_ext.cpu"]
        assert row[col["cpu ms"]] == report.fmt_ms(r["median_s"])
        speedup = float(row[col["cpu speed-up"]].split("x")[0])
        assert math.isclose(speedup, r["speedup"], abs_tol=0.006)
        assert ("slower" in row[col["cpu speed-up"]]) == (r["speedup"] < 1)
        assert row[col["mem torch.nn"]] == "n/m"
    assert "not measured" in text


@pytest.mark.xdist_group("bench_quick")
def test_terminal_table_has_a_row_per_case(quick):
    lines = quick["stdout"].splitlines()
    for case in quick["result"]["cases"]:
        pattern = r"\s+".join(re.escape(x) for x in (case["shape"], case["cell"], case["mode"],
                                                      case["dtype"]))
        assert sum(1 for line in lines if re.match(pattern + r"\s", line)) == 1, case["id"]
    assert "speed-up" in lines[0]
    assert quick["paths"]["json"] in quick["stdout"] or os.path.relpath(quick["paths"]["json"]) in quick["stdout"]


@pytest.mark.xdist_group("bench_quick")
def test_progress_bar_drawn(quick):
    assert "case" in quick["stderr"] and "100%" in quick["stderr"]


# ------------------------------------------------------------------- PNG --
@pytest.mark.xdist_group("bench_quick")
def test_png_is_valid(quick):
    with open(quick["paths"]["png"], "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    assert data[-8:-4] == b"IEND"
    import matplotlib.image

    assert matplotlib.image.imread(quick["paths"]["png"]).shape[:2] == (height, width)


# ----------------------------------------------------------------- flags --
def test_selection_flags_and_reference_backend(tmp_path):
    paths, _, _ = run_main(QUICK + ["--out", str(tmp_path), "--cases", "proj,pack*", "--cells", "lstm",
                                    "--modes", "train", "--backends", "cpu,reference", "--no-progress"])
    with open(paths["json"]) as f:
        result = json.load(f)
    assert [c["id"] for c in result["cases"]] == ["proj/lstm/train/fp32", "packed/lstm/train/fp32"]
    for case in result["cases"]:
        assert set(case["results"]) == {"torch.nn", "rnn_ext.cpu", "rnn_ext.reference"}
        assert case["results"]["rnn_ext.reference"]["max_abs_diff"] < 1e-3
    with open(paths["md"]) as f:
        header, rows = markdown_rows(f.read())
    assert "reference speed-up" in header and len(rows) == 2


def test_backend_variants_run_with_their_switch_set(tmp_path, monkeypatch):
    # A variant is its backend run with its switch set around every call
    # (forward and backward), and the environment restored after.
    var, value = runner.VARIANTS["cpu:mkl"]
    monkeypatch.delenv(var, raising=False)
    seen = []
    call = runner.switched("cpu:mkl", lambda: seen.append(os.environ.get(var)))
    call()
    assert seen == [value] and var not in os.environ
    monkeypatch.setenv(var, "before")
    call()
    assert seen[-1] == value and os.environ[var] == "before"
    assert runner.switched("cpu", len) is len
    paths, _, _ = run_main(QUICK + ["--out", str(tmp_path), "--cases", "fastrnns", "--cells", "lstm",
                                    "--backends", "cpu,cpu:mkl,cuda:persistent", "--no-progress"])
    with open(paths["json"]) as f:
        result = json.load(f)
    for case in result["cases"]:
        assert set(case["results"]) == {"torch.nn", "rnn_ext.cpu", "rnn_ext.cpu:mkl"}
        assert case["results"]["rnn_ext.cpu:mkl"]["max_abs_diff"] < 1e-4
    assert any("cuda:persistent not run" in n for n in result["notes"])


def test_bad_flags_are_refused(tmp_path):
    for argv in (["--cases", "no-such-case"], ["--cells", "transformer"], ["--backends", "mkl"],
                 ["--dtypes", "fp8"], ["--results"]):
        with pytest.raises(SystemExit) as e:
            run_main(QUICK + ["--out", str(tmp_path)] + argv)
        assert "benchmarks:" in str(e.value.code)
    assert os.listdir(tmp_path) == []


def test_module_entry_point_lists_cases():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--list"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ids = [line.split()[0] for line in proc.stdout.splitlines()]
    assert ids == expected_ids()


# ------------------------------------------------------------ the grids --
def test_default_grids():
    gpu = {s.name: s for s in C.grid_shapes("gpu")}
    assert (gpu["fastrnns"].T, gpu["fastrnns"].B, gpu["fastrnns"].I, gpu["fastrnns"].H) == (100, 64, 512, 512)
    lat = [s for s in gpu.values() if s.group == "latency"]
    assert {(s.B, s.H) for s in lat} == {(b, h) for b in (1, 4, 16) for h in (256, 512, 768, 1024)}
    assert all(s.T == 1024 for s in lat)
    assert (gpu["throughput-b256"].B, gpu["throughput-b256"].H) == (256, 1024)
    assert gpu["bidir-2layer"].layers == 2 and gpu["bidir-2layer"].bidirectional
    assert gpu["proj"].proj > 0 and gpu["packed"].packed
    cpu = {s.name: s for s in C.grid_shapes("cpu")}
    assert cpu.keys() == gpu.keys()
    for name, s in cpu.items():  # only the sequences are shorter
        g = gpu[name]
        assert s.T < g.T and (s.B, s.I, s.H, s.layers, s.proj) == (g.B, g.I, g.H, g.layers, g.proj)


def test_flops_by_hand():
    s = C.Shape("x", "fastrnns", T=2, B=3, I=4, H=5)
    assert C.flops(s, "lstm", "infer") == 2 * 6 * 20 * (4 + 5)
    assert C.flops(s, "gru", "infer") == 2 * 6 * 15 * (4 + 5)
    assert C.flops(s, "lstm", "train") == 3 * C.flops(s, "lstm", "infer")
    p = C.Shape("p", "proj", T=2, B=3, I=4, H=5, proj=2)
    assert C.flops(p, "lstm", "infer") == 2 * 6 * 20 * (4 + 2) + 2 * 6 * 5 * 2
    b = C.Shape("b", "bidir", T=2, B=3, I=4, H=5, layers=2, bidirectional=True)
    assert C.flops(b, "gru", "infer") == 2 * (2 * 6 * 15 * (4 + 5)) + 2 * (2 * 6 * 15 * (10 + 5))
    k = C.Shape("k", "packed", T=8, B=6, I=4, H=5, packed=True)
    n = int(C.packed_lengths(k).sum())
    assert n < 8 * 6 and C.flops(k, "lstm", "infer") == 2 * n * 20 * (4 + 5)


def test_packed_lengths_unsorted_and_full():
    for s in C.grid_shapes("gpu") + C.grid_shapes("quick"):
        if s.packed:
            lengths = C.packed_lengths(s)
            assert lengths.max() == s.T and lengths.min() >= 1
            assert not torch.equal(lengths, lengths.sort(descending=True).values)


def test_measure_rotates_inputs_and_bounds_repeats():
    calls = {"a": [], "b": []}
    impls = {k: (lambda i, k=k: calls[k].append(i)) for k in calls}
    samples = timing.measure(impls, timing.Clock("cpu"), warmup_calls=2, budget_s=1e9, min_reps=3,
                             max_reps=7)
    assert {k: len(v) for k, v in samples.items()} == {"a": 7, "b": 7}
    assert calls["a"] == list(range(9)) and calls["b"] == list(range(9))
    assert all(t >= 0 for v in samples.values() for t in v)
    samples = timing.measure(impls, timing.Clock("cpu"), warmup_calls=1, budget_s=0, min_reps=3,
                             max_reps=7)
    assert len(samples["a"]) == 3


# ---------------------------------------------------------------- README --
def test_readme_section_matches_committed_results():
    with open(readme.README) as f:
        text = f.read()
    assert "## Benchmarks" in text
    assert readme.current(text) == readme.render().strip("\n")
    if readme.latest_gpu_result()[1] is None:
        assert "No GPU results are recorded yet" in readme.current(text)
        assert not re.search(r"\d", readme.current(text))


@pytest.mark.xdist_group("bench_quick")
def test_readme_renders_a_gpu_result(quick, tmp_path):
    result = json.loads(json.dumps(quick["result"]))
    result["meta"]["device_type"] = "cuda"
    result["meta"]["device"] = "Fake GPU"
    with open(tmp_path / "fake-gpu_20990101-000000.json", "w") as f:
        json.dump(result, f)
    body = readme.render(str(tmp_path))
    assert "Fake GPU" in body and "fake-gpu_20990101-000000.json" in body
    _, rows = markdown_rows(body)
    assert len(rows) == len(result["cases"])
    text = readme.splice(f"a\n{readme.BEGIN}\nold\n{readme.END}\nb\n", body)
    assert readme.current(text) == body and text.startswith("a\n") and text.endswith("b\n")


# ---------------------------------------------------------------- errors --
def test_a_failing_backend_is_reported_and_the_rest_runs(tmp_path, monkeypatch):
    import rnn_ext.reference

    def broken(*args, **kwargs):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(rnn_ext.reference, "lstm_reference", broken)
    paths, stdout, _ = run_main(QUICK + ["--out", str(tmp_path), "--cases", "fastrnns", "--modes", "infer",
                                         "--backends", "cpu,reference", "--no-progress"])
    with open(paths["json"]) as f:
        result = json.load(f)
    by_id = {c["id"]: c for c in result["cases"]}
    lstm, gru = by_id["fastrnns/lstm/infer/fp32"]["results"], by_id["fastrnns/gru/infer/fp32"]["results"]
    assert "broken on purpose" in lstm["rnn_ext.reference"]["error"]
    assert "median_s" not in lstm["rnn_ext.reference"] and lstm["rnn_ext.cpu"]["median_s"] > 0
    assert gru["rnn_ext.reference"]["error"] is None and gru["rnn_ext.reference"]["speedup"] > 0
    assert "broken on purpose" in stdout
    with open(paths["md"]) as f:
        text = f.read()
    assert "Errors:" in text and "Failed in: `fastrnns/lstm/infer/fp32`" in text


def test_a_failing_case_does_not_end_the_run(tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("torch.nn broken on purpose")

    monkeypatch.setattr(torch.nn.GRU, "forward", broken)
    paths, _, _ = run_main(QUICK + ["--out", str(tmp_path), "--cases", "fastrnns", "--modes", "train",
                                    "--cells", "lstm,gru", "--no-progress"])
    with open(paths["json"]) as f:
        result = json.load(f)
    lstm, gru = result["cases"]
    assert lstm["results"]["rnn_ext.cpu"]["speedup"] > 0
    assert all("broken on purpose" in r["error"] for r in gru["results"].values())
    assert gru["results"]["rnn_ext.cpu"]["speedup"] is None
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------- GPU --
@pytest.mark.cuda
def test_quick_run_on_the_gpu(tmp_path):
    import rnn_ext

    paths, _, _ = run_main(["--quick", "--device", "cuda", "--dtypes", "fp32,fp16", "--budget", "0",
                            "--min-reps", "2", "--max-reps", "3", "--out", str(tmp_path),
                            "--no-progress"])
    with open(paths["json"]) as f:
        result = json.load(f)
    meta = result["meta"]
    assert meta["device_type"] == "cuda" and meta["gpu"]["name"] == meta["device"]
    assert meta["tf32"] == {"cublas": False, "cudnn": False}
    assert set(meta["matmul"]["flops_per_s"]) == {"fp32", "fp16"}
    assert any(c["torch_path"] == "cuDNN" for c in result["cases"])
    for case in result["cases"]:
        if rnn_ext.WITH_CUDA:
            assert "rnn_ext.cuda" in case["results"]
        for name, r in case["results"].items():
            assert r["error"] is None, (case["id"], name, r["error"])
            assert r["median_s"] > 0
            assert r["peak_mem_bytes"] >= r["step_mem_bytes"] >= 0
            if case["mode"] == "train":
                assert r["step_mem_bytes"] > 0
            if name != "torch.nn":
                assert math.isclose(r["speedup"], case["results"]["torch.nn"]["median_s"] / r["median_s"])
    with open(paths["md"]) as f:
        _, rows = markdown_rows(f.read())
    assert len(rows) == len(result["cases"]) and all(row[-1] != "n/m" for row in rows)


def test_overhead_probe_times_every_module_against_nn():
    """python -m benchmarks.overhead: one row per module, shape and mode, with
    nn's and rnn_ext's time per single-step call and their ratio."""
    from benchmarks import overhead

    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            overhead.main(["--rounds", "1", "--calls", "2", "--shapes", "1x4,2x3", "--backend", "cpu"])
    finally:
        torch.set_num_threads(threads)
    rows = [line.split() for line in out.getvalue().splitlines()[2:]]
    assert {(r[0], r[1], r[2], r[3]) for r in rows} == {
        (kind, mode, B, H) for kind in overhead.KINDS for mode in overhead.MODES
        for B, H in (("1", "4"), ("2", "3"))}
    for r in rows:
        t_nn, t_ext, ratio = float(r[4]), float(r[5]), float(r[6])
        assert t_nn > 0 and t_ext > 0
        assert math.isclose(ratio, t_nn / t_ext, rel_tol=0.05, abs_tol=0.01)
        assert (len(r) == 8) == (r[1] == "infer")  # the bare ops' time, in inference
