"""Smoke run for compute-sanitizer: every backend x dtype x (projection,
lengths, bidirectional) of rnn_ext.LSTM and rnn_ext.GRU, forward and
backward at tiny sizes, compared with the "reference" backend in fp64.

    python -m gpu_check.smoke [--device cuda|cpu] [--backends cuda,triton:step] [--dtypes fp32,fp16]

One line per case (PASS/FAIL, the largest error relative to the
reference's scale), then "smoke: N passed, M failed"; exit status 1 on any
failure.  Tiny sizes keep it quick under the sanitizers (which slow kernels
down 10-100x); the checks are loose for fp16/bf16: this catches garbage,
the test suite checks accuracy.
"""
import argparse
import itertools
import os
import sys
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnn_ext

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Largest error allowed, relative to the largest magnitude of the reference.
REL_TOL = {"fp64": 1e-9, "fp32": 1e-4, "fp16": 3e-2, "bf16": 2e-1}
# "cuda:persistent": the persistent CUDA kernels (RNN_EXT_CUDA_PERSISTENT=force).
GPU_BACKENDS = ("cuda", "cuda:persistent", "triton:persistent", "triton:grid", "triton:step")
CELLS = ("lstm", "gru", "rnn")
CPU_BACKENDS = ("cpu",)
T, B, I, H, P = 6, 3, 8, 16, 8


def configs(cell):
    for proj, lengths, bidir in itertools.product((0, P), (False, True), (False, True)):
        if proj and cell != "lstm":
            continue
        yield dict(proj=proj, lengths=lengths, bidirectional=bidir)


def _module(cell, cfg, backend, dtype, device):
    kw = dict(num_layers=1, bidirectional=cfg["bidirectional"], backend=backend, dtype=dtype, device=device)
    if cell == "lstm":
        return rnn_ext.LSTM(I, H, proj_size=cfg["proj"], **kw)
    if cell == "rnn":
        return rnn_ext.RNN(I, H, nonlinearity="tanh", **kw)
    return rnn_ext.GRU(I, H, **kw)


def _run(module, x, lengths):
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, state = module(inp)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
    states = list(state) if isinstance(state, tuple) else [state]
    return [out] + states


def one_case(cell, cfg, backend, dt, device):
    """Largest relative error over outputs, final states and every gradient."""
    name, _, strategy = backend.partition(":")
    dtype = DTYPES[dt]
    gen = torch.Generator().manual_seed(0)
    ref = _module(cell, cfg, "reference", torch.float64, "cpu")
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.4)
    mod = _module(cell, cfg, name, dtype, device)
    mod.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    x64 = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([T, 2, 4]) if cfg["lengths"] else None
    x = x64.to(device, dtype).requires_grad_()
    x64.requires_grad_()
    switch = "RNN_EXT_CUDA_PERSISTENT" if name == "cuda" else "RNN_EXT_TRITON_STRATEGY"
    if strategy:
        os.environ[switch] = "force" if name == "cuda" else strategy
    try:
        got = _run(mod, x, lengths)
        want = _run(ref, x64, lengths)
        seeds = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in want]
        sum((g.double().cpu() * s).sum() for g, s in zip(got, seeds)).backward()
        sum((w * s).sum() for w, s in zip(want, seeds)).backward()
        if device == "cuda":
            torch.cuda.synchronize()
    finally:
        os.environ.pop(switch, None)
    pairs = list(zip(got, want)) + [(x.grad, x64.grad)]
    pairs += [(a.grad, b.grad) for a, b in zip(mod.parameters(), ref.parameters())]
    worst = 0.0
    for g, w in pairs:
        g = g.detach().double().cpu()
        if not torch.isfinite(g).all():
            return float("inf")
        scale = max(w.detach().abs().max().item(), 1e-6)
        worst = max(worst, (g - w.detach()).abs().max().item() / scale)
    return worst


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gpu_check.smoke", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backends", default=None, help=f"default: {','.join(GPU_BACKENDS)} on a GPU, "
                                                    f"{','.join(CPU_BACKENDS)} on a CPU")
    p.add_argument("--dtypes", default=None, help="default: fp64,fp32,fp16,bf16 on a GPU, fp64,fp32 on a CPU")
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    backends = args.backends.split(",") if args.backends else list(GPU_BACKENDS if gpu else CPU_BACKENDS)
    dtypes = args.dtypes.split(",") if args.dtypes else (list(DTYPES) if gpu else ["fp64", "fp32"])
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    passed = failed = 0
    started = time.perf_counter()
    for backend, dt, cell in itertools.product(backends, dtypes, CELLS):
        for cfg in configs(cell):
            label = (f"{backend:18s} {dt} {cell} proj={cfg['proj']} lengths={int(cfg['lengths'])} "
                     f"bidir={int(cfg['bidirectional'])}")
            try:
                err = one_case(cell, cfg, backend, dt, args.device)
                ok = err <= REL_TOL[dt]
                detail = f"rel err {err:.2e} (tol {REL_TOL[dt]:.0e})"
            except Exception as e:  # noqa: BLE001 -- a failing case is reported, the run goes on
                ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            passed, failed = passed + ok, failed + (not ok)
            print(f"{'PASS' if ok else 'FAIL'} {label} {detail}", flush=True)
    print(f"smoke: {passed} passed, {failed} failed in {time.perf_counter() - started:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
