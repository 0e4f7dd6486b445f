"""The input projection of a layer, x W_ih^T + b_ih over the whole sequence,
as one GEMM before the recurrence.

On the CPU in fp32 it runs through oneDNN's matmul (PyTorch's
mkldnn._linear_pointwise, what Inductor uses for linear layers) instead of
F.linear's MKL sgemm where that was measured faster, and so may the input
gradient and the weight gradients (dW_ih here; dW_hh and dW_hr in the C++
ops, which take their row threshold from this rule when it is imported).
Which is faster depends on the code path each library takes on the CPU, so
the rule is one row per machine kind (RULES; measurements in
benchmarks/NOTES.md, all on AMD EPYC CPUs, where MKL does not take its
fastest code path):
  AVX512-ZEN5  AMD Zen 5 (family 26 on): oneDNN's AVX-512 kernels run at
          twice MKL's AVX2 path.  The forward from 96 rows (T x B) on,
          1.3x-2.4x MKL (below, its per-call weight reorder makes it
          0.5x-1.6x); forwards of 16 to 95 rows as (W x^T)^T, which reads
          W in place, 0.9x-3.6x MKL and up to 5x oneDNN's x W^T; forwards of
          fewer than 16 rows as x W^T (oneDNN's few-row kernels read W in
          place too), at 2 rows 1.6x-10x the (W x^T)^T way; the input gradient
          from 24 rows, 1.8x-3.7x; the weight gradients from 48 rows,
          1.5x-2.5x.  At B = 1 the recurrence packs W_hh into panels up to
          64 MiB (1.2x-1.9x MKL in place from 9 to 36 MiB; larger ones,
          unmeasured, are left in place rather than copied per call).
          An LSTM layer computes its input gates (and their gradient)
          inside the recurrence from B = 4 while W_ih and W_hh fit in
          8 MiB (rnn_ext/_layer.py, input_phase): 1.1x-1.25x the
          projection and the sequence op there.  Only this kind has it.
  AVX512  oneDNN for the forward and the input gradient from 256 rows on:
          1.1x-1.6x MKL there; below, oneDNN's per-call weight reorder does
          not pay (24 rows: 1.5x-3x slower than MKL).  The weight gradients
          stay with MKL, at the machine's rate there (measured on a Zen 4),
          and at B = 1 panels up to 8 MiB of W_hh (slower at 16).
  AVX2    the forward through oneDNN from 16 rows on where the weight is
          large (I >= 256 and at least 2^18 elements): 1.1x-1.6x MKL at
          24-128 rows, about equal beyond; with small weights MKL (up to
          2x faster at I = 16).  The input gradient through oneDNN only from
          1024 rows on: with the transposed weight view it was 0.6x-0.95x
          MKL's mm below that, about equal above.  Weight gradients: MKL;
          B = 1 panels up to 8 MiB, as measured on the Zen 4.
Everywhere else (GPU, other dtypes or ISAs, torch.compile, torch.func,
tracing, oneDNN switched off or absent) it is F.linear, unchanged.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import _C
from ._function import _apply_base, plain_eager

_onednn_linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_ONEDNN = _onednn_linear is not None and torch.backends.mkldnn.is_available()


@dataclass(frozen=True)
class Rule:
    """When the projection's products go through oneDNN (fp32, CPU)."""
    min_rows: int         # forward: at least this many rows (T x B) ...
    min_in: int           # ... an input size at least this ...
    min_weight: int       # ... and at least this many weight elements
    grad_min_rows: int    # the input gradient: at least this many rows
    weight_grad_min_rows: int = -1  # the weight gradients: from this many rows (-1: never)
    # Forwards from this many rows up to min_rows through oneDNN as (W x^T)^T
    # (rnn_ext::short_linear): as the right operand oneDNN reorders all of W
    # every call, as the left one it reads W in place (-1: never) ...
    short_min_rows: int = -1
    # ... and forwards of fewer rows than this as x W^T (oneDNN's few-row
    # kernels read W in place too).
    onednn_below_rows: int = 0
    # At B = 1, the largest W_hh (MiB) the CPU executor packs into panels
    # (cpu/blas.h, single_row_panel_bytes); larger ones MKL multiplies in place.
    single_row_panel_mib: int = 8
    # An LSTM layer's input gates computed inside the recurrence (the input
    # phase of partition.h; rnn_ext/_layer.py) from this batch on, while
    # W_ih and W_hh together take at most input_phase_max_mib (0: never).
    input_phase_min_batch: int = 4
    input_phase_max_mib: int = 0


RULES = {
    "AVX512-ZEN5": Rule(min_rows=96, min_in=0, min_weight=0, grad_min_rows=24,
                        weight_grad_min_rows=48, short_min_rows=16,
                        onednn_below_rows=16,
                        single_row_panel_mib=64, input_phase_max_mib=8),
    "AVX512": Rule(min_rows=256, min_in=0, min_weight=0, grad_min_rows=256),
    "AVX2": Rule(min_rows=16, min_in=256, min_weight=1 << 18, grad_min_rows=1024),
}


def _amd_family(cpuinfo="/proc/cpuinfo"):
    """The CPU family of an AMD CPU (26 for Zen 5), or None elsewhere."""
    fields = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's fields are enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        return int(fields["cpu family"]) if fields.get("vendor_id") == "AuthenticAMD" else None
    except (OSError, KeyError, ValueError):
        return None


def machine_kind(capability=None, amd_family=None):
    """The key of RULES for this CPU: its ISA as PyTorch dispatches it, with
    AMD Zen 5 apart (there MKL runs half oneDNN's rate)."""
    if capability is None:
        try:
            capability = torch.backends.cpu.get_cpu_capability()
        except Exception:  # noqa: BLE001 -- an unknown build: no rule
            return None
        amd_family = _amd_family()
    if capability == "AVX512" and amd_family is not None and amd_family >= 26:
        return "AVX512-ZEN5"
    return capability


RULE = RULES.get(machine_kind())
# The C++ ops' weight gradients (dW_hh, dW_hr) and B = 1 panels follow the
# same rule (without one, their defaults: MKL, 8 MiB).
if RULE is not None:
    _C._set_onednn_weight_grad_rows(RULE.weight_grad_min_rows if _ONEDNN else -1)
    _C._set_single_row_panel_bytes(RULE.single_row_panel_mib << 20)


def _linear(x2d, w, b):
    return _onednn_linear(x2d, w, b, "none", [], "")


def onednn_product(x, w, b):
    """x W^T + b through oneDNN, for x [..., in]: as (W x^T)^T for short
    inputs (_short), else as x W^T."""
    x2d = x.reshape(-1, x.size(-1))
    if _short(x2d.size(0)):
        y = torch.ops.rnn_ext.short_linear(x2d, w, b)
    else:
        y = _linear(x2d, w, b)
    return y.view(*x.shape[:-1], w.size(0))


def product_grads(g, x, w, need_input, need_weight, onednn):
    """The input and weight gradients of y = x W^T + b for y's gradient g
    [rows, out] and x [rows, in] (None where not needed): through oneDNN
    where `onednn` (the forward went through it) and the rule says so for
    these rows, else MKL's mm."""
    gx = gw = None
    if need_input:
        if onednn and RULE is not None and g.size(0) >= RULE.grad_min_rows:
            # w.t() as oneDNN's weight [in, out] view: no transposed copy.
            gx = _linear(g, w.t(), None)
        else:
            gx = g.mm(w)
    if need_weight:
        if onednn and RULE is not None and 0 <= RULE.weight_grad_min_rows <= g.size(0):
            # oneDNN's matmul on g's transposed view (the C++ ops' dW_hh
            # takes the same path): _linear_pointwise would copy g^T.
            gw = torch.ops.rnn_ext.transposed_product(g, x)
        else:
            gw = g.t().mm(x)
    return gx, gw


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(x, w, b):
        return onednn_product(x, w, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, _ = inputs
        ctx.save_for_backward(x, w)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        g = grad.reshape(-1, grad.size(-1))
        gx, gw = product_grads(g, x.reshape(-1, x.size(-1)), w, ctx.needs_input_grad[0],
                               ctx.needs_input_grad[1], True)
        return (None if gx is None else gx.view(x.shape), gw,
                g.sum(0) if ctx.needs_input_grad[2] else None)


def _short(rows):
    """Whether a forward through oneDNN runs as (W x^T)^T (short_linear)."""
    return 0 <= RULE.short_min_rows <= rows < RULE.min_rows


def _route(x, w, b):
    """Whether x W^T + b runs through oneDNN ("onednn": as x W^T below
    onednn_below_rows rows or from min_rows, as (W x^T)^T from
    short_min_rows) or F.linear ("linear")."""
    # plain_eager() first: torch.compile must not see the rest (it traces F.linear).
    if not (plain_eager() and _ONEDNN and RULE is not None and x.device.type == "cpu"
            and x.dtype == torch.float32 and w.dtype == torch.float32
            and (b is None or b.dtype == torch.float32) and torch.backends.mkldnn.enabled
            and x.numel() > 0 and x.size(-1) >= RULE.min_in and w.numel() >= RULE.min_weight):
        return "linear"
    rows = x.numel() // x.size(-1)
    onednn = rows >= RULE.min_rows or rows < RULE.onednn_below_rows or _short(rows)
    return "onednn" if onednn else "linear"


def input_projection(x, w, b):
    """F.linear(x, w, b) for x [..., I], through oneDNN where that is faster."""
    if _route(x, w, b) == "linear":
        return F.linear(x, w, b)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, b)):
        # Function.apply less its per-call inspect.signature binding (_route
        # ruled out torch.func, the one caller that needs it).
        return _apply_base(_OneDNNLinear, x, w, b)
    return _OneDNNLinear.forward(x, w, b)
