"""Triton kernels for the sequence ops (backend="triton")."""


def why_not(device, dtype):
    return "the Triton backend is not implemented yet"
