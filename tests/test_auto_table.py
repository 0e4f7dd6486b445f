""""auto" is table-driven (rnn_ext/backends.py): cell, dtype, hidden size and
batch -> backend and Triton strategy, from a table whose source is named;
the default table keeps cuda before triton on CUDA and cpu on CPU, and a
GPU result fills a table (gpu_check auto-table) that "auto" then follows."""
import json
import os
import sys

import pytest
import torch

import rnn_ext
from rnn_ext import backends, functional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _point(cell, dtype, H, B, backend, strategy=None, device="cuda"):
    return dict(device=device, cell=cell, dtype=dtype, hidden_size=H, batch=B, backend=backend, strategy=strategy)


TABLE = dict(source="test table", order={"cuda": ["cuda", "triton"], "cpu": ["cpu"]},
             points=[_point("lstm", "fp16", 64, 16, "triton", "persistent"),
                     _point("lstm", "fp16", 1024, 16, "cuda"),
                     _point("gru", "fp32", 256, 1, "triton", "step")])


@pytest.fixture(autouse=True)
def _restore_table():
    yield
    backends.reload_auto_table()


@pytest.fixture
def everything_serves(monkeypatch):
    monkeypatch.setattr(backends, "why_not", lambda b, d, t: None)


def test_default_table_is_named_and_keeps_todays_order(monkeypatch):
    monkeypatch.setenv(backends.AUTO_TABLE_ENV, "")
    table = backends.reload_auto_table()
    assert table is backends.DEFAULT_AUTO_TABLE and "no GPU measurement" in table["source"]
    assert table["order"] == {"cuda": ["cuda", "triton"], "cpu": ["cpu"]} and table["points"] == []
    assert backends.resolve("auto", "cpu", torch.float32) == "cpu"
    assert backends.choose("cpu", torch.float64, "rnn", 512, 64) == ("cpu", None, table["source"])


def test_choice_by_cell_dtype_and_size(everything_serves):
    cuda = torch.device("cuda")
    c = backends.choose(cuda, torch.float16, "lstm", 48, 8, table=TABLE)
    assert (c.backend, c.strategy, c.source) == ("triton", "persistent", "test table")
    assert backends.choose(cuda, torch.float16, "lstm", 768, 32, table=TABLE).backend == "cuda"
    assert backends.choose(cuda, torch.float32, "gru", 200, 4, table=TABLE)[:2] == ("triton", "step")
    # Unmeasured cell or dtype: the device's order.
    assert backends.choose(cuda, torch.bfloat16, "lstm", 64, 16, table=TABLE)[:2] == ("cuda", None)
    assert backends.choose(cuda, torch.float16, "rnn", 64, 16, table=TABLE)[:2] == ("cuda", None)


def test_a_point_whose_backend_cannot_serve_falls_back_to_the_order(monkeypatch):
    monkeypatch.setattr(backends, "why_not", lambda b, d, t: "not here" if b == "triton" else None)
    assert backends.choose("cuda", torch.float16, "lstm", 64, 16, table=TABLE)[:2] == ("cuda", None)
    monkeypatch.setattr(backends, "why_not", lambda b, d, t: "not here")
    assert backends.choose("cuda", torch.float16, "lstm", 64, 16, table=TABLE).backend == "reference"


def test_a_gpu_result_fills_the_table(tmp_path, monkeypatch, everything_serves):
    from gpu_check import autotable

    def case(cell, dtype, H, B, mode, times, **sizes):
        s = dict(layers=1, bidirectional=False, packed=False, proj=0, H=H, B=B)
        s.update(sizes)
        return dict(cell=cell, dtype=dtype, mode=mode, sizes=s,
                    results={"torch.nn": dict(median_s=1.0), **{f"rnn_ext.{b}": dict(median_s=t, error=None)
                                                                for b, t in times.items()}})
    result = dict(meta=dict(device_type="cuda", device="NVIDIA H100", date="2026-01-01T00:00:00+00:00"), cases=[
        case("lstm", "fp16", 256, 1, "infer", dict(cuda=2.0, triton=1.0)),
        case("lstm", "fp16", 256, 1, "train", dict(cuda=2.0, triton=1.5)),
        case("lstm", "fp16", 1024, 64, "infer", dict(cuda=1.0, triton=3.0)),
        case("lstm", "fp16", 1024, 64, "train", dict(cuda=1.0, triton=3.0)),
        case("lstm", "fp16", 512, 64, "infer", dict(cuda=9.0, triton=1.0), layers=2),  # not a point
    ])
    path = tmp_path / "result.json"
    path.write_text(json.dumps(result))
    out = tmp_path / "auto_table.json"
    table = autotable.write(str(path), str(out))
    assert [(p["hidden_size"], p["batch"], p["backend"]) for p in table["points"]] == [(256, 1, "triton"),
                                                                                      (1024, 64, "cuda")]
    assert "NVIDIA H100" in table["source"]
    monkeypatch.setenv(backends.AUTO_TABLE_ENV, str(out))
    assert backends.reload_auto_table()["source"] == table["source"]
    assert backends.resolve("auto", "cuda", torch.float16, "lstm", 300, 2) == "triton"
    assert backends.resolve("auto", "cuda", torch.float16, "lstm", 900, 32) == "cuda"
    with pytest.raises(ValueError, match="GPU result"):
        autotable.from_result(dict(result, meta=dict(device_type="cpu")), "x")


@pytest.mark.skipif(backends.why_not("triton", torch.device("cpu"), torch.float32) is not None,
                    reason="needs the Triton interpreter")
def test_the_tables_strategy_reaches_the_triton_kernels(tmp_path, monkeypatch):
    """A CPU table that says triton with the step strategy: functional "auto"
    launches the step kernel T times where Triton's own crossover would
    launch the persistent one once."""
    from rnn_ext.triton import _sequence as S

    table = dict(TABLE, points=[_point("lstm", "fp32", 8, 2, "triton", "step", device="cpu")])
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(backends.AUTO_TABLE_ENV, str(path))
    backends.reload_auto_table()
    monkeypatch.delenv(S.STRATEGY_ENV, raising=False)
    launches = []
    for name in ("lstm_fwd_step_kernel", "lstm_fwd_persistent_kernel"):
        kernel = getattr(S.K, name)

        class Counted:
            def __getitem__(self, grid, kernel=kernel, name=name):
                launches.append(name)
                return kernel[grid]
        monkeypatch.setattr(S.K, name, Counted())
    T, B, H = 3, 2, 8
    gx, w, b = torch.randn(T, B, 4 * H), torch.randn(4 * H, H), torch.randn(4 * H)
    y, *_ = functional.lstm(gx, w, b, backend="auto")
    assert launches == ["lstm_fwd_step_kernel"] * T
    want = rnn_ext.reference.lstm_reference(gx, w, b, None, torch.zeros(B, H), torch.zeros(B, H), None)[0]
    torch.testing.assert_close(y, want)
