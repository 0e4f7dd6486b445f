"""rnn_ext modules under DistributedDataParallel (gloo, 2 CPU processes):
the averaged gradients equal those of one process on the whole batch."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import rnn_ext


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = rnn_ext.LSTM(4, 6, num_layers=2, bidirectional=True)
        self.gru = rnn_ext.GRU(12, 5)
        self.head = nn.Linear(5, 1)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        return self.head(y).mean()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(7, 4, 4, generator=g, dtype=torch.float64)  # T, B=4, I


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(Model().double())
    x = _data()[:, rank * 2:(rank + 1) * 2]  # each rank takes half the batch
    model(x).backward()
    grads = {n: p.grad for n, p in model.module.named_parameters()}
    torch.save(grads, os.path.join(out_dir, f"grads{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    single = Model().double()
    # The mean over the whole batch = the average of the two halves' means.
    single(_data()).backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        for name, p in single.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"rank {rank} {name}: {m}")
