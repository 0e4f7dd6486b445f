"""rnn_ext: fused LSTM and GRU kernels for PyTorch."""
from . import backends, functional, reference  # noqa: F401
from ._ops import WITH_CUDA  # noqa: F401

__version__ = "0.1.0"
