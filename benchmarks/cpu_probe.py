"""Where a CPU forward step goes: python -m benchmarks.cpu_probe

For each (cell, B, H) it times, per time step, in microseconds:
  gemm        the recurrent product alone, torch.mm(h [B,H], W_hh^T) into a
              preallocated output: what rnn_ext's time loop calls each step;
  ext         rnn_ext's recurrent op (rnn_ext.functional.lstm/gru/rnn, backend
              "cpu", no_grad): GEMM + fused pointwise pass + per-step overhead;
  ext-gemm    hence the pointwise pass and the loop's per-step overhead;
  act         torch.sigmoid/torch.tanh over the same number of gate elements
              (ATen's vectorized activations): what the transcendental part
              of the pointwise pass costs when vectorized (at small sizes
              mostly the three ops' dispatch overhead);
  rnn_ext     the whole rnn_ext module forward (input projection included);
  nn          the whole torch.nn module forward: oneDNN's fused RNN
              primitive for LSTM, PyTorch's per-step ATen ops for GRU.
Each figure is the minimum over repeats (the run least disturbed by other
processes) divided by T.  Findings: benchmarks/NOTES.md.
"""
import argparse
import copy
import os
import time

import torch
from torch import nn

SHAPES = [(1, 256), (1, 1024), (4, 256), (4, 1024), (16, 256), (16, 1024), (64, 512), (256, 1024)]


def best(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def probe(cell, B, H, T, reps):
    import rnn_ext
    from rnn_ext import functional

    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    torch.manual_seed(0)
    module = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](H, H).eval()
    ext_module = rnn_ext.convert(copy.deepcopy(module), backend="cpu").eval()
    w_hh, b_hh = module.weight_hh_l0.detach(), module.bias_hh_l0.detach()
    w_ih, b_ih = module.weight_ih_l0.detach(), module.bias_ih_l0.detach()
    x = torch.randn(T, B, H)
    h = torch.randn(B, H)
    gx = torch.nn.functional.linear(x, w_ih, b_ih)
    out = torch.empty(B, G * H)
    w_t = w_hh.t()
    acts = torch.randn(B, G * H)
    act_out = torch.empty(B, G * H)
    # LSTM: i, f, o (+ tanh of g and c); GRU: r, z (+ tanh of n); RNN: (tanh of h)
    n_sig = {"lstm": 3, "gru": 2, "rnn": 0}[cell]

    def gemm():
        for _ in range(T):
            torch.mm(h, w_t, out=out)

    def ext():
        if cell == "lstm":
            functional.lstm(gx, w_hh, b_hh, None, h, h, backend="cpu")
        elif cell == "rnn":
            functional.rnn(gx, w_hh, b_hh, h, backend="cpu")
        else:
            functional.gru(gx, w_hh, b_hh, h, backend="cpu")

    def act():
        for _ in range(T):
            torch.sigmoid(acts[:, :n_sig * H], out=act_out[:, :n_sig * H])
            torch.tanh(acts[:, n_sig * H:], out=act_out[:, n_sig * H:])
            if cell == "lstm":
                torch.tanh(acts[:, :H], out=act_out[:, :H])

    with torch.no_grad():
        return {name: best(fn, reps) / T * 1e6 for name, fn in
                (("gemm", gemm), ("ext", ext), ("act", act), ("rnn_ext", lambda: ext_module(x)),
                 ("nn", lambda: module(x)))}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_probe", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--cells", default="lstm,gru", help="lstm, gru, rnn")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, T={args.T}, "
          f"min of {args.reps}, load average {load:.1f} on {os.cpu_count()} cores; us per step")
    print(f"{'cell':4s} {'B':>4s} {'H':>5s} {'gemm':>8s} {'ext':>8s} {'ext-gemm':>9s} {'act':>8s} "
          f"{'rnn_ext':>8s} {'nn':>8s} {'nn/rnn_ext':>10s}")
    for cell in args.cells.split(","):
        for B, H in SHAPES:
            t = probe(cell, B, H, args.T, args.reps)
            print(f"{cell:4s} {B:4d} {H:5d} {t['gemm']:8.1f} {t['ext']:8.1f} "
                  f"{t['ext'] - t['gemm']:9.1f} {t['act']:8.1f} {t['rnn_ext']:8.1f} {t['nn']:8.1f} "
                  f"{t['nn'] / t['rnn_ext']:10.2f}", flush=True)


if __name__ == "__main__":
    main()
