"""Poisoned outputs: with PyTorch's fill_uninitialized_memory, every tensor
the kernels allocate with at::empty starts as NaN, so an element a kernel
forgets to write shows up as NaN in the results."""
import contextlib

import torch


@contextlib.contextmanager
def poisoned_allocations():
    was_det = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        assert torch.isnan(torch.empty(4)).all(), "poisoning is not active"
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = was_fill
        torch.use_deterministic_algorithms(was_det, warn_only=was_warn)
