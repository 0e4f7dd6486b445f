"""rnn_ext/auto_table.json from a GPU benchmark result: for every single-layer,
unidirectional, unpacked case without projection (the shapes where the
choice depends on cell, dtype, hidden size and batch alone), the rnn_ext
backend with the best geometric mean of its inference and training times.
rnn_ext.backends reads the file ("auto"); see its docstring.

    python -m gpu_check auto-table benchmarks/results/<gpu>_<date>.json [--out FILE]
"""
import json
import math
import os

from rnn_ext import backends


def from_result(result, source):
    """The auto table ({source, order, points}) measured by one GPU result."""
    if result["meta"].get("device_type") != "cuda":
        raise ValueError("an auto table comes from a GPU result (this one ran on a CPU)")
    times = {}
    for case in result["cases"]:
        s = case["sizes"]
        if s["layers"] != 1 or s["bidirectional"] or s["packed"] or s["proj"]:
            continue
        key = (case["cell"], case["dtype"], s["H"], s["B"])
        for name, r in case["results"].items():
            if name.startswith("rnn_ext.") and r.get("median_s") and not r.get("error"):
                times.setdefault(key, {}).setdefault(name[len("rnn_ext."):], []).append(r["median_s"])
    points = []
    for (cell, dtype, H, B), per_backend in sorted(times.items()):
        modes = max(len(v) for v in per_backend.values())
        full = {b: v for b, v in per_backend.items() if len(v) == modes}
        best = min(full, key=lambda b: sum(math.log(t) for t in full[b]))
        points.append(dict(device="cuda", cell=cell, dtype=dtype, hidden_size=H, batch=B, backend=best,
                           strategy=None, geomean_s=math.exp(sum(math.log(t) for t in full[best]) / modes)))
    return dict(source=source, order=backends.DEFAULT_AUTO_TABLE["order"], points=points)


def write(result_path, out=backends.AUTO_TABLE_FILE):
    with open(result_path) as f:
        result = json.load(f)
    rel = os.path.relpath(result_path, os.path.dirname(os.path.dirname(os.path.abspath(out))))
    table = from_result(result, f"measured: {rel} ({result['meta']['device']}, {result['meta']['date']})")
    with open(out, "w") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    return table
