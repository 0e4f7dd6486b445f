"""Text classification with padded batches and packed sequences
(pack_padded_sequence with enforce_sorted=False), trained with
rnn_ext.LSTM and with rnn_ext.GRU on a small generated data set.

The task: a "sentence" of random words is positive when the word "good"
appears more often than "bad".  Sentences have random lengths, so batches
are padded and packed.

    python examples/text_classifier.py --epochs 8
"""
import argparse

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from tqdm import tqdm

import rnn_ext

VOCAB = ["<pad>", "good", "bad", "the", "movie", "was", "plot", "actor", "very", "not", "film", "a"]


def make_dataset(n, max_len, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, max_len + 1, (n,), generator=g)
    tokens = torch.zeros(n, max_len, dtype=torch.long)
    for k, L in enumerate(lengths.tolist()):
        tokens[k, :L] = torch.randint(1, len(VOCAB), (L,), generator=g)
    good = (tokens == VOCAB.index("good")).sum(1)
    bad = (tokens == VOCAB.index("bad")).sum(1)
    return tokens, lengths, (good > bad).long()


class Classifier(nn.Module):
    def __init__(self, rnn_cls, embed=16, hidden=32):
        super().__init__()
        self.embedding = nn.Embedding(len(VOCAB), embed, padding_idx=0)
        self.rnn = rnn_cls(embed, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(self.embedding(tokens), lengths, batch_first=True,
                                      enforce_sorted=False)
        _, h_n = self.rnn(packed)
        h_n = h_n[0] if isinstance(h_n, tuple) else h_n  # LSTM gives (h_n, c_n)
        return self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))


def run(rnn_cls, epochs, n_train, n_test, max_len, batch, device, progress=True):
    torch.manual_seed(0)
    x_tr, l_tr, y_tr = make_dataset(n_train, max_len, seed=1)
    x_te, l_te, y_te = make_dataset(n_test, max_len, seed=2)
    model = Classifier(rnn_cls).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    bar = tqdm(range(epochs), desc=rnn_cls.__name__, disable=not progress)
    for _ in bar:
        perm = torch.randperm(n_train)
        for k in range(0, n_train, batch):
            idx = perm[k:k + batch]
            loss = nn.functional.cross_entropy(model(x_tr[idx].to(device), l_tr[idx]), y_tr[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    with torch.no_grad():
        pred = model(x_te.to(device), l_te).argmax(1).cpu()
    return (pred == y_te).float().mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    accuracy = {}
    for cls in (rnn_ext.LSTM, rnn_ext.GRU):
        accuracy[cls.__name__] = run(cls, args.epochs, args.train, args.test, args.max_len,
                                     args.batch, args.device)
        print(f"{cls.__name__}: test accuracy {accuracy[cls.__name__]:.1%}")
    return accuracy


if __name__ == "__main__":
    main()
