"""Each example runs at small sizes on the CPU and shows what it claims."""
import importlib.util
import os
import struct

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_anatomy(tmp_path):
    png = tmp_path / "gates.png"
    out = load("anatomy").main(["--png", str(png), "--device", "cpu"])
    shapes = {name: rest for name, *rest in out["shapes"]}
    assert shapes["LSTM bidirectional"] == [(8, 2, 6), (2, 2, 3), (2, 2, 3)]
    assert shapes["GRU 2 layers"] == [(8, 2, 3), (2, 2, 3), None]
    assert shapes["LSTM projection"] == [(8, 2, 2), (1, 2, 2), (1, 2, 3)]
    assert out["chunked_diff"] < 1e-6
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100


def test_pos_tagger_same_loss_as_nn():
    out = load("pos_tagger").main(["--epochs", "30", "--device", "cpu"])
    assert out["losses"] == pytest.approx(out["torch_losses"], rel=1e-5)
    assert out["losses"][-1] < out["losses"][0]


def test_text_classifier_learns(capsys):
    acc = load("text_classifier").main(["--epochs", "3", "--train", "256", "--test", "128",
                                        "--max-len", "10", "--device", "cpu"])
    assert set(acc) == {"LSTM", "GRU"}
    # The classes are about balanced, so chance is about 50%.
    assert acc["LSTM"] > 0.7 and acc["GRU"] > 0.7
    assert "test accuracy" in capsys.readouterr().out


def test_param_summary():
    rows, total = load("param_summary").main(["--hidden", "8"])
    assert total == sum(c for _, _, c, _ in rows)
    assert sum(share for *_, share in rows) == pytest.approx(1.0)
    lstm = next(r for r in rows if r[0] == "lstm")
    # 2 layers x 2 directions; layer 2 input is 2H: 4H*(I+H+2) + 3 * 4H*(...)
    H, I = 8, 100
    assert lstm[2] == 2 * 4 * H * (I + H + 2) + 2 * 4 * H * (2 * H + H + 2)
    rnn = next(r for r in rows if r[0] == "rnn")
    assert rnn[1] == "RNN" and rnn[2] == H * (H + H + 2)  # W_ih, W_hh, b_ih, b_hh
