"""What one single-step call costs: python -m benchmarks.overhead

A step-by-step decoder calls its recurrent module once per output step
with one time step of input, so the fixed cost of a call (Python, checks,
dispatch, allocation) matters as much as the arithmetic.  For LSTMCell,
GRUCell, RNNCell, LSTM and GRU (one step, T = 1), each (B, H), and three
modes, it times a call of the torch.nn module and of the rnn_ext module
holding the same weights, and prints both in microseconds and their ratio
nn / rnn_ext (at least 1: rnn_ext costs no more than nn).  The modes:
"infer", the forward under torch.no_grad; "train", the forward with
autograd recording (parameters require grad); "fwd+bwd", a decoder's
training step: input and state require grad too, and the call is the
forward and the backward of the output's sum.  Inference rows also give
"ops": the same step as bare calls of the compiled ops, with no Python of
rnn_ext's around them (for a cell, its one op, rnn_ext::lstm_cell,
gru_cell or rnn_cell; for LSTM and GRU, the input projection
(torch.nn.functional.linear) and the sequence op below the autograd
layer), so that rnn_ext - ops is what rnn_ext's Python adds to a call
(checks, states, dispatch) and ops is the fixed cost of the kernels
themselves.

Calls alternate between nn and rnn_ext in rounds, and each figure is the
minimum over rounds of the mean call time in a round: the least disturbed
run of each, measured under the same conditions.  Findings:
benchmarks/NOTES.md.
"""
import argparse
import os
import time

import torch
from torch import nn

SHAPES = [(1, 32), (4, 32), (16, 32), (1, 256), (16, 256)]
KINDS = ("LSTMCell", "GRUCell", "RNNCell", "LSTM", "GRU")
MODES = ("infer", "train", "fwd+bwd")


def _pair(kind, H, backend):
    import rnn_ext

    torch.manual_seed(0)
    ref = getattr(nn, kind)(H, H)
    ext = getattr(rnn_ext, kind)(H, H, backend=backend)
    ext.load_state_dict(ref.state_dict())
    return ref, ext


def _inputs(kind, B, H, requires_grad=False):
    """One step of input and a state, as a decoder passes them."""
    shape = (B, H) if kind.endswith("Cell") else (1, B, H)
    x, h, c = (torch.randn(shape, requires_grad=requires_grad) for _ in range(3))
    return (x, (h, c) if kind in ("LSTMCell", "LSTM") else h)


def _bare_ops(kind, ext, args):
    """The step as the bare calls of the compiled ops (backend "cpu"),
    bypassing rnn_ext's Python."""
    from rnn_ext._ops import ops

    x, hx = args
    lstm = kind.startswith("LSTM")
    h, c = (hx if lstm else (hx, None))
    if kind.endswith("Cell"):
        w = tuple(getattr(ext, n).detach() for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        if kind == "LSTMCell":
            return lambda: ops.lstm_cell.default(x, h, c, *w)
        if kind == "GRUCell":
            return lambda: ops.gru_cell.default(x, h, *w)
        return lambda: ops.rnn_cell.default(x, h, *w, ext.nonlinearity)
    x, h = x[0], h[0]
    c = c[0] if c is not None else None
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    w_ih, w_hh, b_ih, b_hh = (getattr(ext, n).detach() for n in names)
    op = ops.lstm_forward.default if lstm else ops.gru_forward.default
    below = torch._C._AutoDispatchBelowAutograd

    def step():
        gx = torch.nn.functional.linear(x, w_ih, b_ih).unsqueeze(0)
        with below():
            if lstm:
                return op(gx, w_hh, b_hh, None, h, c, None)
            return op(gx, w_hh, b_hh, h, None)

    return step


# The clock a call is timed with: "wall" (time.perf_counter), or "cpu", the
# calling thread's CPU time (time.thread_time), which leaves out the time the
# system gives other processes: on a shared, oversubscribed machine, wall
# time mostly measures the others.  With one thread (the default) every
# call runs on the calling thread, the autograd engine's CPU backward too.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = CLOCKS["wall"]


def _mean_call(module, args, calls):
    start = _clock()
    for _ in range(calls):
        module(*args)
    return (_clock() - start) / calls


def _with_backward(module):
    """A training step's call: forward, then backward of the output's sum."""
    def step(*args):
        out = module(*args)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
    return step


def probe(kind, B, H, mode, backend="auto", rounds=7, calls=200):
    """(nn, rnn_ext, bare ops or None in training) seconds per single-step
    call in `mode` (one of MODES)."""
    ref, ext = _pair(kind, H, backend)
    args = _inputs(kind, B, H, requires_grad=mode == "fwd+bwd")
    runs = {"nn": ref, "ext": ext}
    if mode == "fwd+bwd":
        runs = {name: _with_backward(m) for name, m in runs.items()}
    if mode == "infer":
        bare = _bare_ops(kind, ext, args)
        runs["ops"] = lambda *_: bare()
    best = dict.fromkeys(runs, float("inf"))
    with torch.set_grad_enabled(mode != "infer"):
        for module in runs.values():  # warm-up
            _mean_call(module, args, max(1, calls // 4))
        for _ in range(rounds):
            for name, module in runs.items():
                best[name] = min(best[name], _mean_call(module, args, calls))
    return best["nn"], best["ext"], best.get("ops")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead",
                                description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: a decoder step is too small to split)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=200, help="calls per round")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--shapes", default=",".join(f"{B}x{H}" for B, H in SHAPES),
                   help="BxH,... (batch x hidden size)")
    p.add_argument("--backend", default="auto", help="rnn_ext backend")
    p.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                   help="wall time, or the thread's CPU time (for a loaded machine)")
    args = p.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend {args.backend!r}, "
          f"{args.clock} clock, min over {args.rounds} rounds of {args.calls} calls, load average {load:.1f} on "
          f"{os.cpu_count()} cores; us per single-step call")
    print(f"{'module':9s} {'mode':7s} {'B':>4s} {'H':>5s} {'nn':>8s} {'rnn_ext':>8s} {'nn/rnn_ext':>10s} "
          f"{'ops':>8s}")
    for kind in args.kinds.split(","):
        for B, H in shapes:
            for mode in MODES:
                t_nn, t_ext, t_ops = probe(kind, B, H, mode, args.backend, args.rounds, args.calls)
                ops = "" if t_ops is None else f"{t_ops * 1e6:8.1f}"
                print(f"{kind:9s} {mode:7s} {B:4d} {H:5d} {t_nn * 1e6:8.1f} "
                      f"{t_ext * 1e6:8.1f} {t_nn / t_ext:10.2f} {ops}", flush=True)


if __name__ == "__main__":
    main()
