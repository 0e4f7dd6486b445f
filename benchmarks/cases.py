"""The benchmark grid: shapes, the cases built from them, and their FLOPs.

A *shape* is one named problem size (e.g. "fastrnns", "latency-b4-h512").
A *case* is a shape run for one cell (lstm, gru, rnn: nn.RNN with tanh), one mode (infer: forward
under torch.no_grad; train: forward plus backward) and one dtype.  Every case
runs on torch.nn and on each selected rnn_ext backend.

There are three grids with the same shape names:
  gpu    the sizes the issue asks for (PyTorch's fastrnns default, latency,
         throughput, 2-layer bidirectional, projection, packed);
  cpu    the same shapes scaled down (shorter sequences) so that the whole
         grid finishes in about 3 minutes on 2 CPU cores;
  quick  tiny sizes: every kind of case once, in seconds.
"""
import fnmatch
from dataclasses import asdict, dataclass, replace

import torch

CELLS = ("lstm", "gru", "rnn")
MODES = ("infer", "train")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@dataclass(frozen=True)
class Shape:
    name: str
    group: str             # fastrnns, latency, throughput, bidir, proj, packed
    T: int                 # sequence length (the longest one when packed)
    B: int                 # batch
    I: int                 # input size
    H: int                 # hidden size
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0          # LSTM proj_size (LSTM only)
    packed: bool = False   # PackedSequence input with variable, unsorted lengths

    def cells(self):
        return ("lstm",) if self.proj else CELLS

    def describe(self):
        s = f"T={self.T} B={self.B} I={self.I} H={self.H}"
        if self.proj:
            s += f" P={self.proj}"
        if self.layers > 1:
            s += f" L={self.layers}"
        if self.bidirectional:
            s += " bidir"
        if self.packed:
            s += " packed"
        return s

    def as_dict(self):
        return asdict(self)


def _gpu_shapes():
    shapes = [Shape("fastrnns", "fastrnns", T=100, B=64, I=512, H=512)]
    for B in (1, 4, 16):
        for H in (256, 512, 768, 1024):
            shapes.append(Shape(f"latency-b{B}-h{H}", "latency", T=1024, B=B, I=H, H=H))
    shapes += [
        Shape("throughput-b256", "throughput", T=100, B=256, I=1024, H=1024),
        Shape("bidir-2layer", "bidir", T=100, B=64, I=512, H=512, layers=2, bidirectional=True),
        Shape("proj", "proj", T=100, B=64, I=512, H=1024, proj=256),
        Shape("packed", "packed", T=100, B=64, I=512, H=512, packed=True),
    ]
    return shapes


# How the CPU grid is scaled from the GPU grid: shorter sequences only (the
# per-step GEMM shapes, B x H, stay those of the GPU grid), except where a
# case alone would take most of the budget.
CPU_SCALE = {
    "fastrnns": dict(T=16),
    "latency": dict(T=24),
    "throughput": dict(T=2),
    "bidir": dict(T=6),
    "proj": dict(T=16),
    "packed": dict(T=16),
}
CPU_SCALE_NOTE = ("CPU grid: the GPU grid's shapes with shorter sequences "
                  "(fastrnns T=100->16, latency T=1024->24, throughput T=100->2, "
                  "bidir-2layer T=100->6, proj and packed T=100->16); batch and hidden "
                  "sizes, hence the per-step GEMM shapes, are unchanged.  "
                  "Run with --grid gpu for the full sizes.")


def _cpu_shapes():
    return [replace(s, **CPU_SCALE[s.group]) for s in _gpu_shapes()]


def _quick_shapes():
    return [
        Shape("fastrnns", "fastrnns", T=8, B=8, I=32, H=32),
        Shape("latency-b1-h64", "latency", T=32, B=1, I=64, H=64),
        Shape("throughput-b64", "throughput", T=4, B=64, I=64, H=64),
        Shape("bidir-2layer", "bidir", T=6, B=4, I=16, H=16, layers=2, bidirectional=True),
        Shape("proj", "proj", T=6, B=4, I=16, H=32, proj=8),
        Shape("packed", "packed", T=8, B=6, I=16, H=16, packed=True),
    ]


GRIDS = {"gpu": _gpu_shapes, "cpu": _cpu_shapes, "quick": _quick_shapes}


def grid_shapes(grid):
    return GRIDS[grid]()


def select_shapes(shapes, patterns):
    """The shapes whose name matches any pattern (fnmatch: "latency-*");
    all of them when patterns is empty.  An unmatched pattern is an error."""
    if not patterns:
        return list(shapes)
    chosen = []
    for pattern in patterns:
        hits = [s for s in shapes if fnmatch.fnmatchcase(s.name, pattern)]
        if not hits:
            names = ", ".join(s.name for s in shapes)
            raise ValueError(f"no case matches {pattern!r}; the cases are: {names}")
        chosen += [s for s in hits if s not in chosen]
    return [s for s in shapes if s in chosen]


def packed_lengths(shape, seed=0):
    """Variable lengths for the packed case: uniform in [T/4, T], unsorted,
    one sequence of full length T.  Deterministic for a given shape."""
    g = torch.Generator().manual_seed(seed + shape.T * 1009 + shape.B)
    lengths = torch.randint(max(1, shape.T // 4), shape.T + 1, (shape.B,), generator=g)
    lengths[shape.B // 2] = shape.T
    return lengths


def tokens(shape):
    """Number of (step, sequence) pairs that do work."""
    if shape.packed:
        return int(packed_lengths(shape).sum())
    return shape.T * shape.B


def flops(shape, cell, mode):
    """Matrix-product FLOPs of one call: per layer and direction, the input
    projection (x W_ih^T), the recurrent product (h W_hh^T) and, with
    proj_size, the projection (h W_hr^T), each 2*M*N*K; times 3 for a
    training step (forward, gradient of the input, gradient of the weights).
    Pointwise work is not counted."""
    N = tokens(shape)
    G = GATES[cell] * shape.H
    hout = shape.proj or shape.H
    dirs = 2 if shape.bidirectional else 1
    total = 0
    for layer in range(shape.layers):
        in_size = shape.I if layer == 0 else hout * dirs
        per_dir = 2 * N * G * (in_size + hout)
        if shape.proj:
            per_dir += 2 * N * shape.H * shape.proj
        total += dirs * per_dir
    return total * (3 if mode == "train" else 1)


@dataclass(frozen=True)
class Case:
    shape: Shape
    cell: str
    mode: str
    dtype: str

    @property
    def id(self):
        return f"{self.shape.name}/{self.cell}/{self.mode}/{self.dtype}"


def build_cases(shapes, cells, modes, dtypes):
    return [Case(s, c, m, d) for d in dtypes for s in shapes for c in cells if c in s.cells()
            for m in modes]
