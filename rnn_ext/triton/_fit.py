"""Whether the persistent kernels of a sequence fit one thread block of the GPU.

A persistent program keeps W_hh (and W_hr) on chip for the whole sequence:
Triton stages the weight tiles of its tl.dot in shared memory, next to the
state in registers.  Whether that fits is not guessed here: it is read off
the compiled kernels.  `persistent_sm90.json` (next to this file) holds, for
every persistent kernel, cell family, dtype and padded tile size up to the
first that does not fit, the shared memory, registers and spill of the
kernel compiled for sm_90 (an H100) by `python tests/_triton_sm90.py --write`,
with the specialisation a real launch gets (all optional inputs present;
fp32 with both dot precisions).  `make test` recompiles the boundary sizes
and checks this table against them (tests/test_triton.py).

"auto" runs persistent when every kernel of the forward and backward compiled
with at most the limit of shared memory and no spill; a strategy asked for
by name only needs the shared memory (a spilling kernel runs, slower; one
over the limit cannot launch).  Sizes past the table (larger tiles) do not
fit.  fp32 is measured for both dot precisions (TF32 or not), as launched.  The limit is the sm_90 one: 227 KiB of shared
memory per block (opt-in); on another GPU the device's own opt-in limit is
used with the same measurements, an estimate (its compiler lays tiles out
differently).
"""
import functools
import json
import os

import torch

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "persistent_sm90.json")
SM90_SHARED_LIMIT = 227 * 1024
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
FAMILIES = ("lstm", "lstm_proj", "gru")


def family(n_gates, P):
    """The measured kernels that decide for a cell.  The RNN kernels are not
    in the table yet: their fit is bounded by the LSTM kernels' with the same
    tiles, which hold four W_hh tiles where the RNN kernels hold one (a
    conservative rule until tests/_triton_sm90.py measures them)."""
    return "gru" if n_gates == 3 else ("lstm_proj" if P else "lstm")


def aligned(H, K):
    """Whether a launch specialises the kernel on H and K being multiples of
    16 (Triton's launcher does, for integer arguments): the table measures
    both kinds, and they differ (an unaligned H can spill where H = 128 does
    not).  Mixed alignment takes the unaligned measurement."""
    return H % 16 == 0 and K % 16 == 0


@functools.lru_cache(maxsize=None)
def table():
    """{(family, dtype, precision, block_h, block_k, aligned): [entries]}; each entry one
    compiled kernel: kernel, shared_bytes, registers, spill_bytes."""
    with open(TABLE_PATH) as f:
        data = json.load(f)
    out = {}
    for e in data["kernels"]:
        key = (e["family"], e["dtype"], e["precision"], e["block_h"], e["block_k"], e["aligned"])
        out.setdefault(key, []).append(e)
    return out


def shared_limit(device=None):
    """Shared memory one block may use: the device's opt-in limit on a GPU
    that reports it, else sm_90's (also under the interpreter, so that the
    CPU test suite takes the decisions an H100 would)."""
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        limit = getattr(props, "shared_memory_per_block_optin", None)
        if limit:
            return int(limit)
    return SM90_SHARED_LIMIT


def why_not_fit(n_gates, block_h, block_k, P, dtype, precision="ieee", limit=SM90_SHARED_LIMIT,
                allow_spill=False, aligned=False):
    """None if the persistent kernels with these padded tiles fit, else why.

    Shared memory over the limit is a hard limit: the launch would fail.
    Spill is not (the kernel runs, slower): "auto" never picks a kernel that
    spills (allow_spill=False), a strategy asked for by name may."""
    fam, dt = family(n_gates, P), _DTYPE_NAMES[dtype]
    entries = table().get((fam, dt, precision, block_h, block_k, aligned))
    tiles = f"tiles {block_h} x {block_k}"
    if not entries:
        return (f"its {tiles} are larger than any measured: for {fam} {dt} the table of kernels "
                f"compiled for sm_90 (rnn_ext/triton/persistent_sm90.json) stops at the first size "
                f"whose kernels need more than the {limit // 1024} KiB of shared memory a block may use "
                f"(or at 256)")
    worst = max(entries, key=lambda e: e["shared_bytes"])
    if worst["shared_bytes"] > limit:
        return (f"its kernels ({tiles}) need {worst['shared_bytes'] / 1024:.0f} KiB of shared memory "
                f"per block ({worst['kernel']}, compiled for sm_90), more than the "
                f"{limit // 1024} KiB a block may use")
    spilled = [e for e in entries if e["spill_bytes"]]
    if spilled and not allow_spill:
        e = max(spilled, key=lambda e: e["spill_bytes"])
        return (f"its kernels ({tiles}) spill {e['spill_bytes']} bytes of registers per thread "
                f"({e['kernel']}, compiled for sm_90 with {e['registers']} registers)")
    return None


def largest_fitting_block_h(n_gates, block_k, P, dtype, precision="ieee", limit=SM90_SHARED_LIMIT,
                            allow_spill=False, aligned=False):
    """The largest padded hidden size that fits, with this block_k (for a
    projection) or block_k = block_h (without); None if none does."""
    fam, dt = family(n_gates, P), _DTYPE_NAMES[dtype]
    sizes = sorted({k[3] for k in table() if k[:3] == (fam, dt, precision)})
    best = None
    for bh in sizes:
        bk = block_k if P else bh
        if bk <= bh and why_not_fit(n_gates, bh, bk, P, dtype, precision, limit, allow_spill, aligned) is None:
            best = bh
    return best
