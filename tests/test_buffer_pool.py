"""The CPU ops' buffer cache (csrc/ops/buffer_pool.h): the training
workspace and gate gradients reuse blocks across calls, the results do not
depend on what a reused block held, and poisoning reaches reused blocks."""
import torch

import rnn_ext
from rnn_ext import _C
from tests._poison import poisoned_allocations


def _train_step(module, x):
    out, _ = module(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    return out.detach(), grads


def test_blocks_reused_and_results_repeat():
    torch.manual_seed(0)
    module = rnn_ext.LSTM(32, 64, backend="cpu")  # workspace 24*16*320*4 B > 256 KiB
    x = torch.randn(24, 16, 32)
    first = _train_step(module, x)
    held = _C._reusable_cached_bytes()
    assert held >= 24 * 16 * 5 * 64 * 4, "the workspace did not come back to the cache"
    second = _train_step(module, x)
    assert _C._reusable_cached_bytes() == held, "a same-size call took new blocks"
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)


def test_poisoning_reaches_reused_blocks():
    """Under poisoned allocations a reused block starts as NaN, like at::empty's
    (csrc/ops/buffer_pool.cpp), and the kernels write every element of it:
    the results equal the clean call's, NaN-free."""
    torch.manual_seed(0)
    module = rnn_ext.GRU(32, 64, backend="cpu")
    x = torch.randn(24, 16, 32)
    clean = _train_step(module, x)  # leaves finite values in the cached blocks
    held = _C._reusable_cached_bytes()
    assert held > 0
    with poisoned_allocations():
        poisoned = _train_step(module, x)  # the same blocks, NaN-filled first
    assert _C._reusable_cached_bytes() == held, "the poisoned call did not reuse the blocks"
    assert torch.equal(clean[0], poisoned[0])
    for a, b in zip(clean[1], poisoned[1]):
        assert torch.equal(a, b)
