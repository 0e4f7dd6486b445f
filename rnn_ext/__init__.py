"""rnn_ext: fused LSTM, GRU and RNN kernels for PyTorch.

    import rnn_ext
    lstm = rnn_ext.LSTM(512, 512, num_layers=2)   # was nn.LSTM(512, 512, num_layers=2)
    model = rnn_ext.convert(model)                # or swap every nn.LSTM/GRU/RNN in a model
"""
from . import backends, functional, reference  # noqa: F401
from ._ops import WITH_CUDA  # noqa: F401
from .modules import (GRU, LSTM, RNN, GRUCell, Internals, LSTMCell, RNNCell, convert,  # noqa: F401
                      to_torch)

__version__ = "0.1.0"
__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "Internals", "convert",
           "to_torch", "functional", "reference"]
