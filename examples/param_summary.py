"""Parameter summary of rnn_ext models, like the tutorials' model printout:
each layer's weight count and its share of the total.

    python examples/param_summary.py
"""
import argparse

from torch import nn

import rnn_ext


def summary(model):
    """Rows of (layer name, type, parameter count, share of total)."""
    counts = []
    for name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if own:
            counts.append((name, type(module).__name__, own))
    total = sum(c for _, _, c in counts)
    return [(name, kind, c, c / total) for name, kind, c in counts], total


def format_summary(model):
    rows, total = summary(model)
    lines = [f"{'layer':<12} {'type':<10} {'weights':>10} {'share':>8}", "-" * 43]
    lines += [f"{name:<12} {kind:<10} {c:>10,} {share:>8.1%}" for name, kind, c, share in rows]
    lines += ["-" * 43, f"{'total':<23} {total:>10,}"]
    return "\n".join(lines)


class Tagger(nn.Module):
    def __init__(self, vocab=10_000, embed=100, hidden=256, classes=17):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = rnn_ext.LSTM(embed, hidden, num_layers=2, bidirectional=True)
        self.gru = rnn_ext.GRU(2 * hidden, hidden)
        self.rnn = rnn_ext.RNN(hidden, hidden, nonlinearity="relu")
        self.head = nn.Linear(hidden, classes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args(argv)
    model = Tagger(hidden=args.hidden)
    text = format_summary(model)
    print(text)
    return summary(model)


if __name__ == "__main__":
    main()
