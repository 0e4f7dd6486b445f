"""Placeholder demo until the full runner lands: LSTM and GRU through
rnn_ext and torch.nn, comparing outputs and time."""
import time

import torch
from torch import nn

import rnn_ext


def median_time(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(100, 16, 256, device=device)
    for name, ref_cls, ext_cls in (("LSTM", nn.LSTM, rnn_ext.LSTM), ("GRU", nn.GRU, rnn_ext.GRU)):
        ref = ref_cls(256, 256).to(device)
        ext = ext_cls(256, 256).to(device)
        ext.load_state_dict(ref.state_dict())
        with torch.no_grad():
            err = (ext(x)[0] - ref(x)[0]).abs().max().item()
            t_ref = median_time(lambda: ref(x))
            t_ext = median_time(lambda: ext(x))
        print(f"{name}: max |diff| {err:.2e}  torch.nn {t_ref * 1e3:.2f} ms  rnn_ext {t_ext * 1e3:.2f} ms  "
              f"speed-up {t_ref / t_ext:.2f}x")


if __name__ == "__main__":
    main()
