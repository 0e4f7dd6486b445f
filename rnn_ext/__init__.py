"""rnn_ext: fused LSTM and GRU kernels for PyTorch.

    import rnn_ext
    lstm = rnn_ext.LSTM(512, 512, num_layers=2)   # was nn.LSTM(512, 512, num_layers=2)
    model = rnn_ext.convert(model)                # or swap every nn.LSTM/GRU in a model
"""
from . import backends, functional, reference  # noqa: F401
from ._ops import WITH_CUDA  # noqa: F401
from .modules import GRU, LSTM, GRUCell, Internals, LSTMCell, convert, to_torch  # noqa: F401

__version__ = "0.1.0"
__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell", "Internals", "convert", "to_torch", "functional",
           "reference"]
