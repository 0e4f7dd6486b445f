"""Timing: CUDA events on a GPU, time.perf_counter on a CPU.

Every sample times one call.  On a GPU the device is synchronized before
each sample, so a sample is the whole call as a caller sees it, host launch
overhead included (the latency cases are bound by it); the events then time
the GPU from the first launch to the last kernel's end.

Implementations are warmed up first (compilation, autotuning, cuDNN plans,
caching allocator), then sampled in turn, one call each, so a slow drift of
the machine (clocks, other processes) hits all of them alike.  The figure
reported is the median.
"""
import math
import statistics
import time

import torch


class Clock:
    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn):
        """Seconds taken by one call of fn()."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._start.record()
            fn()
            self._end.record()
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / 1e3
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def summary(samples):
    s = sorted(samples)
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
    return {"median_s": statistics.median(s), "min_s": s[0], "max_s": s[-1],
            "q1_s": q[0], "q3_s": q[2], "reps": len(s)}


def measure(impls, clock, *, warmup_calls=2, warmup_s=0.0, budget_s=0.5, min_reps=3,
            max_reps=100, errors=None):
    """impls: {name: step(i)}, where step(i) runs one call on input set i.
    Returns {name: [seconds per sample]}.  Each implementation gets
    clamp(budget_s / its warm-up time, min_reps, max_reps) samples.  With an
    `errors` dict, an implementation that raises during warm-up is left out
    and its error recorded there; otherwise the exception propagates."""
    counters = {name: 0 for name in impls}

    def call(name):
        i = counters[name]
        counters[name] += 1
        return impls[name](i)

    estimate = {}
    for name in impls:
        start = time.perf_counter()
        n = 0
        try:
            while n < max(1, warmup_calls) or time.perf_counter() - start < warmup_s:
                estimate[name] = clock.time(lambda: call(name))
                n += 1
        except Exception as e:  # noqa: BLE001 -- one failing implementation must not stop the rest
            if errors is None:
                raise
            errors[name] = f"{type(e).__name__}: {e}"
            estimate.pop(name, None)
    reps = {name: int(min(max_reps, max(min_reps, math.ceil(budget_s / max(t, 1e-9)))))
            for name, t in estimate.items()}
    samples = {name: [] for name in estimate}
    for r in range(max(reps.values(), default=0)):
        for name in estimate:
            if r < reps[name]:
                samples[name].append(clock.time(lambda: call(name)))
    return samples


def matmul_rate(device, dtype, n, reps=10):
    """FLOP/s of an n x n x n torch.mm in this dtype on this device: the
    best of `reps` timed products after warm-up (a floor is a bound, so it
    takes the rate the device showed it can reach).  On a GPU in fp32 it
    follows PyTorch's TF32 switch, like every product in the benchmark."""
    clock = Clock(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    samples = measure({"mm": lambda i: torch.mm(a, b, out=out)}, clock, warmup_calls=3,
                      budget_s=0.0, min_reps=reps, max_reps=reps)["mm"]
    return 2 * n ** 3 / min(samples)


def peak_memory(step, reset, device):
    """Bytes a call allocates on top of what is allocated before it (the
    module, its inputs), as (peak in use during the call, that peak minus the
    memory in use before it).  GPU only: on a CPU, (None, None)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, None
    reset()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak, peak - base
