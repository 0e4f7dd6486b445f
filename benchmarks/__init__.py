"""Benchmarks of rnn_ext against torch.nn (python -m benchmarks)."""
