"""Which implementation runs a sequence op: "cpu" and "cuda" (the compiled
kernels), "triton", or "reference" (plain PyTorch).  "auto" picks the fastest
one that can serve the device and dtype; a backend asked for by name that
cannot serve the request raises an error saying why."""
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


# resolve()'s answers that depend only on its arguments (the compiled
# backends, reference): a module call asks at every layer and step, and the
# answer must cost next to nothing.  Answers involving Triton are not kept:
# they depend on the environment (TRITON_INTERPRET) and on imports.
_RESOLVED = {}


def resolve(backend, device, dtype):
    """The backend that will run: `backend` itself, or auto's choice."""
    key = (backend, device, dtype)
    try:
        return _RESOLVED[key]
    except (KeyError, TypeError):  # TypeError: an unhashable device argument
        pass
    chosen = _resolve(backend, device, dtype)
    if chosen != "triton" and isinstance(device, torch.device):
        _RESOLVED[key] = chosen
    return chosen


def _resolve(backend, device, dtype):
    if backend not in BACKENDS:
        raise ValueError(f"rnn_ext: unknown backend {backend!r}; choose one of {BACKENDS}")
    device = torch.device(device)
    if backend == "auto":
        order = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}.get(device.type, ())
        for candidate in order:
            if why_not(candidate, device, dtype) is None:
                return candidate
        return "reference"
    reason = why_not(backend, device, dtype)
    if reason is not None:
        raise RuntimeError(f"rnn_ext: backend {backend!r} cannot run this request: {reason}")
    return backend

