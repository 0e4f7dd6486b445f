"""fp32 comparisons with cuDNN need TF32 off on both sides: cuDNN's RNNs use
TF32 for fp32 by default (torch.backends.cudnn.allow_tf32 is True), cuBLAS
does not.  conftest.py turns both off around every test; these check that it
does (on any machine: the switches exist without a GPU)."""
import torch

from _utils import tf32


def test_tf32_is_off_for_cublas_and_cudnn_in_every_test():
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False


def test_tf32_switch_sets_both_sides_and_restores_them():
    with tf32(True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with tf32(False):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
