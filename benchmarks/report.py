"""The outputs of a run: JSON (every figure), a terminal table, a Markdown
table and a PNG chart of the speed-up per case."""
import json
import math
import os

TORCH = "torch.nn"
MiB = 1 << 20

LEGEND = (
    "Times are medians of one call (infer: forward under torch.no_grad; train: forward and "
    "backward).  **speed-up** = torch.nn time / rnn_ext time: above 1 rnn_ext is faster, "
    "below 1 it is slower (marked *slower*).  **floor** = the case's matrix-product FLOPs "
    "(input projection + recurrent product + projection, x3 for training) at the rate of a "
    "large torch.mm in the same dtype measured in the same run; **/floor** = time / floor "
    "(1 would be a perfect GEMM-bound implementation).  **mem** = peak memory allocated "
    "during one call on top of what was allocated before it (module, inputs), in MiB.  "
    "**torch.nn via**: the library torch.nn ran (cuDNN, oneDNN, or its native per-step loop).")


def impls(result):
    """torch.nn first, then every rnn_ext implementation seen, in run order."""
    names = [TORCH]
    for case in result["cases"]:
        for name in case["results"]:
            if name not in names:
                names.append(name)
    return names


def short(name):
    return name.split(".", 1)[1] if name.startswith("rnn_ext.") else name


def fmt_ms(seconds):
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_speedup(x, markdown=False):
    if x is None:
        return "-"
    if x < 1:
        return f"{x:.2f}x *slower*" if markdown else f"{x:.2f}x slower"
    return f"{x:.2f}x"


def fmt_ratio(x):
    return "-" if x is None else (f"{x:.0f}" if x >= 100 else f"{x:.1f}")


def fmt_mem(r, device_type):
    if device_type != "cuda":
        return "n/m"
    b = r.get("step_mem_bytes")
    return "-" if b is None else f"{b / MiB:.0f}"


def table(result, markdown=False):
    """(headers, rows): one row per case."""
    names = impls(result)
    exts = names[1:]
    device_type = result["meta"]["device_type"]
    headers = ["case", "cell", "mode", "dtype", "torch.nn via", "torch.nn ms"]
    for n in exts:
        headers += [f"{short(n)} ms", f"{short(n)} speed-up"]
    headers += ["floor ms"] + [f"{short(n)} /floor" for n in names]
    headers += [f"mem {short(n)}" for n in names]
    rows = []
    for case in result["cases"]:
        res = case["results"]
        get = lambda n: res.get(n, {})  # noqa: E731
        row = [case["shape"], case["cell"], case["mode"], case["dtype"], case["torch_path"]]
        row.append("error" if get(TORCH).get("error") else fmt_ms(get(TORCH).get("median_s")))
        for n in exts:
            r = get(n)
            if not r:
                row += ["not run", "-"]
            elif r.get("error") and r.get("median_s") is None:
                row += ["error", "-"]
            else:
                row += [fmt_ms(r.get("median_s")), fmt_speedup(r.get("speedup"), markdown)]
        row.append(fmt_ms(case["floor_s"]))
        row += [fmt_ratio(get(n).get("floor_ratio")) for n in names]
        row += [fmt_mem(get(n), device_type) if get(n) else "-" for n in names]
        rows.append(row)
    return headers, rows


def summary(result):
    """Per rnn_ext implementation: cases timed, faster, slower (ids), the
    geometric mean speed-up."""
    out = {}
    for name in impls(result)[1:]:
        ups = [(c["id"], c["results"][name].get("speedup")) for c in result["cases"]
               if name in c["results"]]
        timed = [(i, x) for i, x in ups if x]
        slower = [i for i, x in timed if x < 1]
        errors = [c["id"] for c in result["cases"] if c["results"].get(name, {}).get("error")]
        geo = math.exp(sum(math.log(x) for _, x in timed) / len(timed)) if timed else None
        out[name] = {"cases": len(timed), "faster": len(timed) - len(slower), "slower": slower,
                     "errors": errors, "geomean_speedup": geo}
    return out


def summary_lines(result, markdown=False):
    lines = []
    for name, s in summary(result).items():
        geo = "-" if s["geomean_speedup"] is None else f"{s['geomean_speedup']:.2f}x"
        line = (f"{name}: faster than torch.nn in {s['faster']} of {s['cases']} cases, slower in "
                f"{len(s['slower'])}; geometric-mean speed-up {geo}.")
        if s["slower"]:
            ids = ", ".join(f"`{i}`" if markdown else i for i in s["slower"])
            line += f"  Slower in: {ids}."
        if s["errors"]:
            ids = ", ".join(f"`{i}`" if markdown else i for i in s["errors"])
            line += f"  Failed in: {ids}."
        lines.append(line)
    return lines


def errors(result):
    return [(c["id"], name, r["error"]) for c in result["cases"]
            for name, r in c["results"].items() if r.get("error")]


def meta_lines(result):
    m = result["meta"]
    v = m["versions"]
    commit = (m["git_commit"] or "unknown")[:12] + (" (uncommitted changes)" if m.get("git_dirty") else "")
    rates = ", ".join(f"{d} {r / 1e12:.3g} TFLOP/s" if r >= 1e12 else f"{d} {r / 1e9:.3g} GFLOP/s"
                      for d, r in m["matmul"]["flops_per_s"].items())
    return [
        f"device: {m['device']}",
        f"date: {m['date']}, commit {commit}, grid {m['grid']}, wall time {m['wall_s']:.0f} s",
        f"versions: torch {v['torch']}, triton {v['triton']}, CUDA {v['cuda']}, "
        f"cuDNN {v['cudnn']}, rnn_ext {v['rnn_ext']}, Python {v['python']}",
        f"matrix rate (best of 10 torch.mm, {m['matmul']['n']}^3): {rates}",
        f"timing: {m['timing']['method']}; median of {m['timing']['min_reps']}.."
        f"{m['timing']['max_reps']} samples after warm-up",
    ]


def shapes_legend(result):
    seen = {}
    for c in result["cases"]:
        seen.setdefault(c["shape"], c["describe"])
    return seen


# --------------------------------------------------------------- Markdown --
def markdown_table(result):
    headers, rows = table(result, markdown=True)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |",
             "|" + "|".join(" --- " if i < 5 else " ---: " for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(result, title="rnn_ext benchmarks"):
    out = [f"# {title}", ""]
    out += [f"- {line}" for line in meta_lines(result)]
    out += [""] + [f"- {n}" for n in result["notes"]] + [""]
    out += [f"- {line}" for line in summary_lines(result, markdown=True)]
    out += ["", LEGEND, "", "Shapes: " + "; ".join(f"`{k}` {v}" for k, v in
                                                   shapes_legend(result).items()) + ".", ""]
    out.append(markdown_table(result))
    errs = errors(result)
    if errs:
        out += ["", "Errors:", ""] + [f"- `{i}` {n}: {e}" for i, n, e in errs]
    return "\n".join(out) + "\n"


def write_markdown(result, path):
    with open(path, "w") as f:
        f.write(markdown(result))


# --------------------------------------------------------------- terminal --
def terminal(result):
    headers, rows = table(result)
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    right = lambda i: i >= 5  # noqa: E731
    fmt = lambda cells: "  ".join(str(c).rjust(w) if right(i) else str(c).ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    out += [""] + meta_lines(result) + [""] + result["notes"] + [""] + summary_lines(result)
    errs = errors(result)
    if errs:
        out += ["", "Errors:"] + [f"  {i} {n}: {e}" for i, n, e in errs]
    return "\n".join(out)


# ------------------------------------------------------------------- JSON --
def write_json(result, path):
    with open(path, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)
        f.write("\n")


# ------------------------------------------------------------------ chart --
def write_chart(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exts = impls(result)[1:]
    dtypes = list(dict.fromkeys(c["dtype"] for c in result["cases"]))
    labels = list(dict.fromkeys(f"{c['shape']} {c['cell']} {c['mode']}" for c in result["cases"]))
    by_key = {(f"{c['shape']} {c['cell']} {c['mode']}", c["dtype"]): c for c in result["cases"]}
    n = len(labels)
    bar_h = 0.8 / max(1, len(exts))
    fig, axes = plt.subplots(1, len(dtypes), figsize=(4.5 * len(dtypes) + 2.5, 0.28 * n * max(1, len(exts)) / 1.5 + 2),
                             sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    found = [c["results"].get(name, {}).get("speedup") for c in result["cases"] for name in exts]
    found = [x for x in found if x]
    # Symmetric log range around 1, in powers of 2, covering every bar.
    span = max([1] + [math.ceil(abs(math.log2(x))) for x in found])
    ticks = [2.0 ** k for k in range(-span, span + 1)]
    for ax, dtype in zip(axes[0], dtypes):
        for k, name in enumerate(exts):
            ys, xs = [], []
            for j, label in enumerate(labels):
                case = by_key.get((label, dtype))
                x = case["results"].get(name, {}).get("speedup") if case else None
                if x:
                    ys.append(j + (k - (len(exts) - 1) / 2) * bar_h)
                    xs.append(x)
            # Bars grow from 1 (as fast as torch.nn): right is faster, left slower.
            ax.barh(ys, [x - 1 for x in xs], left=1, height=bar_h, color=colors[k % len(colors)],
                    label=short(name))
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlim(2.0 ** -span, 2.0 ** span)
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}x" for t in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_title(dtype)
        ax.set_xlabel("speed-up over torch.nn (log scale; left of 1x: slower)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(n))
    axes[0][0].set_yticklabels(labels, fontsize=8)
    axes[0][0].set_ylim(n - 0.5, -0.5)
    fig.suptitle(f"rnn_ext vs torch.nn: {result['meta']['device']}", fontsize=10)
    if exts:
        handles, names = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, names, loc="upper right", fontsize=8, ncol=len(exts))
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.path.abspath(path)
