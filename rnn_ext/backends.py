"""Which implementation runs a sequence op: "cpu" and "cuda" (the compiled
kernels), "triton", or "reference" (plain PyTorch).  "auto" picks by a table
(cell, dtype, hidden size, batch -> backend and Triton strategy), skipping
any backend that cannot serve the device and dtype; a backend asked for by
name that cannot serve the request raises an error saying why.

The table's source
------------------
No GPU has timed rnn_ext yet, so the table in use today is DEFAULT_AUTO_TABLE
below: a documented default, not a measurement -- "cuda" before "triton" on
CUDA tensors, "cpu" on CPU tensors, every cell, dtype and size alike.  A GPU
run replaces it with measurements: `python -m gpu_check auto-table
benchmarks/results/<gpu>_<date>.json` writes rnn_ext/auto_table.json (see
AUTO_TABLE_FILE), whose "points" are the fastest rnn_ext backend of each
benchmarked (cell, dtype, hidden size, batch); a request takes the nearest
measured point of its cell and dtype (sizes compared on a log scale), and
the device's default order where none is measured.  RNN_EXT_AUTO_TABLE names
another file (an empty value: the default table).  The table is read once,
at import (reload_auto_table() reads it again).  The table is keyed by
cell name strings ("lstm", "gru", and any cell added later), so a new cell
needs no code here: it takes the default order until it is measured.
"""
import json
import math
import os
from typing import NamedTuple, Optional

import torch

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
_COMPILED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _triton_reason(device, dtype):
    from . import triton as rnn_triton  # local: importing triton is slow

    return rnn_triton.why_not(device, dtype)


def why_not(backend, device, dtype):
    """None if `backend` can run on this device and dtype, else the reason."""
    from ._ops import WITH_CUDA

    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"it runs on CPU tensors, and these are on {device}"
        if dtype not in _COMPILED_DTYPES:
            return f"it does not support dtype {dtype}"
        return None
    if backend == "cuda":
        if not WITH_CUDA:
            return "rnn_ext was built without CUDA (no nvcc, a CPU-only PyTorch, or RNN_EXT_CPU_ONLY=1)"
        if device.type != "cuda":
            return f"it runs on CUDA tensors, and these are on {device}"
        if dtype not in _COMPILED_DTYPES:
            return f"it does not support dtype {dtype}"
        return None
    if backend == "triton":
        return _triton_reason(device, dtype)
    raise ValueError(f"rnn_ext: unknown backend {backend!r}; choose one of {BACKENDS}")


# --------------------------------------------------------------- auto table --
AUTO_TABLE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "auto_table.json")
AUTO_TABLE_ENV = "RNN_EXT_AUTO_TABLE"
DEFAULT_AUTO_TABLE = {
    "source": "default (no GPU measurement exists yet): cuda before triton on CUDA, cpu on CPU",
    # Per device type: the backends to try, in order, where no point applies.
    "order": {"cuda": ["cuda", "triton"], "cpu": ["cpu"]},
    # Measured points: {"device", "cell", "dtype", "hidden_size", "batch",
    # "backend", "strategy" (Triton's, or null for its own crossover)}.
    "points": [],
}
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


class Choice(NamedTuple):
    backend: str
    strategy: Optional[str] = None  # Triton's strategy; None: its default (env, else its crossover)
    source: str = ""                # where the choice comes from


def _read_table():
    """RNN_EXT_AUTO_TABLE's file, else rnn_ext/auto_table.json where a GPU run
    wrote one, else the default."""
    path = os.environ.get(AUTO_TABLE_ENV)
    if path is None:
        path = AUTO_TABLE_FILE if os.path.exists(AUTO_TABLE_FILE) else ""
    if not path:
        return DEFAULT_AUTO_TABLE
    with open(path) as f:
        table = json.load(f)
    for key in ("source", "order", "points"):
        if key not in table:
            raise ValueError(f"rnn_ext: auto table {path} lacks {key!r}")
    return table


# Read once, at import: "auto" runs inside torch.compile'd code, where a file
# read would break the graph.
_TABLE = _read_table()


def auto_table():
    """The table "auto" uses (see the module docstring)."""
    return _TABLE


def reload_auto_table():
    """Reads the table again (after RNN_EXT_AUTO_TABLE or the file changed)."""
    global _TABLE
    _TABLE = _read_table()
    _RESOLVED.clear()
    return _TABLE


_AUTO_ON_CPU = [None, False]  # [the table it was computed from, the answer]


def auto_runs_cpu_on_cpu():
    """Whether "auto" runs every request on CPU tensors with the compiled
    "cpu" backend (true of the default table: no measured CPU point, "cpu"
    first in the CPU order).  The cells' one-op step takes it as given."""
    table = _TABLE
    if _AUTO_ON_CPU[0] is not table:
        order = list(table["order"].get("cpu", ()))
        _AUTO_ON_CPU[:] = [table, order[:1] == ["cpu"]
                           and not any(p["device"] == "cpu" for p in table["points"])]
    return _AUTO_ON_CPU[1]


def _nearest(points, hidden_size, batch):
    def distance(p):
        d = 0.0
        for want, have in ((hidden_size, p["hidden_size"]), (batch, p["batch"])):
            if want is not None and have:
                d += abs(math.log(max(want, 1)) - math.log(have))
        return d
    return min(points, key=distance) if points else None


def choose(device, dtype, cell=None, hidden_size=None, batch=None, table=None):
    """auto's choice for a request: the table's nearest measured point of this
    cell and dtype if its backend can serve the request, else the first of
    the device's order that can, else "reference"."""
    table = auto_table() if table is None else table
    device = torch.device(device)
    points = [p for p in table["points"] if p["device"] == device.type and p["cell"] == cell
              and p["dtype"] == _DTYPE_NAMES.get(dtype)]
    point = _nearest(points, hidden_size, batch)
    if point is not None and why_not(point["backend"], device, dtype) is None:
        return Choice(point["backend"], point.get("strategy"), table["source"])
    for candidate in table["order"].get(device.type, ()):
        if why_not(candidate, device, dtype) is None:
            return Choice(candidate, None, table["source"])
    return Choice("reference", None, table["source"])


# resolve_choice()'s answers that depend only on its arguments (the compiled
# backends, reference): a module call asks at every layer and step, and the
# answer must cost next to nothing.  Answers involving Triton are not kept:
# they depend on the environment (TRITON_INTERPRET) and on imports.  Sizes
# are part of the key only where the table has measured points.
_RESOLVED = {}


def resolve_choice(backend, device, dtype, cell=None, hidden_size=None, batch=None):
    """The backend that will run, and its Triton strategy: `backend` itself
    (strategy None), or auto's choice for this cell and size."""
    sized = backend == "auto" and bool(_TABLE["points"])
    key = (backend, device, dtype, cell) + ((hidden_size, batch) if sized else ())
    try:
        return _RESOLVED[key]
    except (KeyError, TypeError):  # TypeError: an unhashable argument
        pass
    choice = _resolve_choice(backend, device, dtype, cell, hidden_size, batch)
    if choice.backend != "triton" and isinstance(device, torch.device) and len(_RESOLVED) < 4096:
        _RESOLVED[key] = choice
    return choice


def _resolve_choice(backend, device, dtype, cell, hidden_size, batch):
    if backend not in BACKENDS:
        raise ValueError(f"rnn_ext: unknown backend {backend!r}; choose one of {BACKENDS}")
    device = torch.device(device)
    if backend == "auto":
        return choose(device, dtype, cell, hidden_size, batch)
    reason = why_not(backend, device, dtype)
    if reason is not None:
        raise RuntimeError(f"rnn_ext: backend {backend!r} cannot run this request: {reason}")
    return Choice(backend, None, "asked for by name")


def resolve(backend, device, dtype, cell=None, hidden_size=None, batch=None):
    """The backend that will run: `backend` itself, or auto's choice."""
    return resolve_choice(backend, device, dtype, cell, hidden_size, batch).backend

