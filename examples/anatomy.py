"""Anatomy of rnn_ext.LSTM and rnn_ext.GRU: output, hidden and cell shapes
for single-layer, bidirectional and multi-layer cases; chunked runs that
agree with whole-sequence runs; and the gate activations over time, plotted
to a PNG.

    python examples/anatomy.py --png gates.png
"""
import argparse

import torch

import rnn_ext


def shapes(device):
    """(description, shapes) for the cases the tutorials walk through."""
    L, B, C, H = 8, 2, 5, 3  # length, batch, channels, hidden
    x = torch.randn(L, B, C, device=device)
    rows = []
    for name, kw in (("single layer", {}), ("bidirectional", dict(bidirectional=True)),
                     ("2 layers", dict(num_layers=2)), ("projection", dict(proj_size=2))):
        lstm = rnn_ext.LSTM(C, H, **kw).to(device)
        out, (h, c) = lstm(x)
        rows.append((f"LSTM {name}", tuple(out.shape), tuple(h.shape), tuple(c.shape)))
        if "proj_size" not in kw:
            gru = rnn_ext.GRU(C, H, **kw).to(device)
            out, h = gru(x)
            rows.append((f"GRU {name}", tuple(out.shape), tuple(h.shape), None))
    return rows


def chunked_agrees(device):
    """Feeding a sequence in chunks, passing (h, c) along, gives the same
    output as one call.  Returns the largest difference."""
    lstm = rnn_ext.LSTM(5, 3, num_layers=2).to(device)
    x = torch.randn(12, 2, 5, device=device)
    whole, _ = lstm(x)
    state, outs = None, []
    for chunk in x.split(4):
        out, state = lstm(chunk, state)
        outs.append(out)
    return (torch.cat(outs) - whole).abs().max().item()


def plot_gates(path, device, steps=40):
    """Gate activations of one LSTM unit over time, for a sine-wave input."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    lstm = rnn_ext.LSTM(1, 4).to(device)
    t = torch.linspace(0, 4 * torch.pi, steps, device=device)
    with torch.no_grad():
        _, _, inside = lstm.forward_with_internals(torch.sin(t).view(steps, 1, 1))
    gates = inside.gates[0, :, 0, :, 0].cpu()  # layer 0, batch 0, all gates, unit 0
    cells = inside.cell_states[0, :, 0, 0].cpu()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k, name in enumerate("ifgo"):
        ax.plot(gates[:, k], label=f"{name} gate")
    ax.plot(cells, "k--", label="cell state c")
    ax.set_xlabel("time step")
    ax.set_title("LSTM unit 0: gate activations over time")
    ax.legend(ncol=5, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return gates, cells


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", default="lstm_gates.png")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = shapes(args.device)
    print(f"{'case':<22} {'output':<14} {'h_n':<12} {'c_n':<12}")
    for name, out, h, c in rows:
        print(f"{name:<22} {str(out):<14} {str(h):<12} {str(c) if c else '-':<12}")
    diff = chunked_agrees(args.device)
    print(f"chunked vs whole sequence: max |difference| = {diff:.2e}")
    plot_gates(args.png, args.device)
    print(f"gate activations plotted to {args.png}")
    return dict(shapes=rows, chunked_diff=diff, png=args.png)


if __name__ == "__main__":
    main()
