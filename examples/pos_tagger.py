"""Part-of-speech tagger, as in PyTorch's sequence-models tutorial:
embedding -> rnn_ext.LSTM -> linear, log-softmax, NLL loss, SGD.  Trained
from the same initial weights with torch.nn.LSTM too, to show the losses
agree.

    python examples/pos_tagger.py --epochs 300
"""
import argparse
import copy

import torch
from torch import nn

import rnn_ext

TRAINING_DATA = [
    ("The dog ate the apple".split(), ["DET", "NN", "V", "DET", "NN"]),
    ("Everybody read that book".split(), ["NN", "V", "DET", "NN"]),
]
TAGS = {"DET": 0, "NN": 1, "V": 2}


class LSTMTagger(nn.Module):
    def __init__(self, embedding_dim, hidden_dim, vocab_size, tagset_size, lstm_cls=rnn_ext.LSTM):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = lstm_cls(embedding_dim, hidden_dim)
        self.hidden2tag = nn.Linear(hidden_dim, tagset_size)

    def forward(self, sentence):
        embeds = self.word_embeddings(sentence)
        lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
        tag_space = self.hidden2tag(lstm_out.view(len(sentence), -1))
        return torch.log_softmax(tag_space, dim=1)


def train(model, data, word_to_ix, epochs, device):
    loss_fn = nn.NLLLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for sentence, tags in data:
            model.zero_grad()
            inputs = torch.tensor([word_to_ix[w] for w in sentence], device=device)
            targets = torch.tensor([TAGS[t] for t in tags], device=device)
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total)
    return losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    word_to_ix = {}
    for sentence, _ in TRAINING_DATA:
        for word in sentence:
            word_to_ix.setdefault(word, len(word_to_ix))
    torch.manual_seed(1)
    ours = LSTMTagger(6, 6, len(word_to_ix), len(TAGS)).to(args.device)
    theirs = rnn_ext.to_torch(copy.deepcopy(ours))  # same initial weights, nn.LSTM inside
    assert isinstance(theirs.lstm, nn.LSTM)
    loss_ours = train(ours, TRAINING_DATA, word_to_ix, args.epochs, args.device)
    loss_theirs = train(theirs, TRAINING_DATA, word_to_ix, args.epochs, args.device)
    print(f"epoch 1 loss:  rnn_ext {loss_ours[0]:.6f}   torch.nn {loss_theirs[0]:.6f}")
    print(f"final loss:    rnn_ext {loss_ours[-1]:.6f}   torch.nn {loss_theirs[-1]:.6f}")
    with torch.no_grad():
        sentence = TRAINING_DATA[0][0]
        scores = ours(torch.tensor([word_to_ix[w] for w in sentence], device=args.device))
        names = {v: k for k, v in TAGS.items()}
        tagged = [f"{w}/{names[i]}" for w, i in zip(sentence, scores.argmax(1).tolist())]
        print("tagged:", " ".join(tagged))
    return dict(losses=loss_ours, torch_losses=loss_theirs, tagged=tagged)


if __name__ == "__main__":
    main()
