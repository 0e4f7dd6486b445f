"""Plain PyTorch references for the sequence ops: a readable loop over time
steps with torch ops.  Every backend is tested against these, and
backend="reference" runs them (autograd comes from PyTorch).

Each function computes exactly what the fused ops compute, including the
workspace the fused kernels keep for backward:
  LSTM workspace [T, B, 5H] = i, f, g, o (activated gates), c (cell state)
  GRU  workspace [T, B, 4H] = r, z, n (activated gates), hn = W_hn h + b_hn
  RNN  workspace [T, B, H]  = h (the activated output, in the accumulation type)
Rows past their length keep their state and give zeros (output and
workspace), as pad_packed_sequence does.  fp16/bf16 inputs keep the cell
state and the gate math in fp32, like the kernels.
"""
import torch


def acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _active(lengths, t, batch, device):
    if lengths is None:
        return None
    return (lengths.to(device) > t).view(batch, 1)


def _keep(active, new, old):
    return new if active is None else torch.where(active, new, old)


def _zero_past_end(active, x):
    return x if active is None else torch.where(active, x, torch.zeros_like(x))


def lstm_reference(input_gates, w_hh, b_hh, w_hr, h0, c0, lengths=None):
    """input_gates [T, B, 4H] = x W_ih^T + b_ih; returns
    (output [T, B, H or P], h_n [B, H or P], c_n [B, H], workspace)."""
    T, B, _ = input_gates.shape
    dtype, acc = input_gates.dtype, acc_dtype(input_gates.dtype)
    h, c = h0, c0.to(acc)
    outputs, workspace = [], []
    for t in range(T):
        active = _active(lengths, t, B, input_gates.device)
        pre = input_gates[t].to(acc) + (h @ w_hh.t()).to(acc)
        if b_hh is not None:
            pre = pre + b_hh.to(acc)
        i, f, g, o = pre.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        h_new = (o * torch.tanh(c_new)).to(dtype)
        if w_hr is not None:
            h_new = h_new @ w_hr.t()
        outputs.append(_zero_past_end(active, h_new))
        workspace.append(_zero_past_end(active, torch.cat([i, f, g, o, c_new], dim=1)))
        h, c = _keep(active, h_new, h), _keep(active, c_new, c)
    return torch.stack(outputs), h, c.to(dtype), torch.stack(workspace)


def gru_reference(input_gates, w_hh, b_hh, h0, lengths=None):
    """input_gates [T, B, 3H] = x W_ih^T + b_ih; returns
    (output [T, B, H], h_n [B, H], workspace)."""
    T, B, _ = input_gates.shape
    dtype, acc = input_gates.dtype, acc_dtype(input_gates.dtype)
    h = h0
    outputs, workspace = [], []
    for t in range(T):
        active = _active(lengths, t, B, input_gates.device)
        hh = (h @ w_hh.t()).to(acc)
        if b_hh is not None:
            hh = hh + b_hh.to(acc)
        x_r, x_z, x_n = input_gates[t].to(acc).chunk(3, dim=1)
        h_r, h_z, h_n = hh.chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h_new = ((1 - z) * n + z * h.to(acc)).to(dtype)
        outputs.append(_zero_past_end(active, h_new))
        workspace.append(_zero_past_end(active, torch.cat([r, z, n, h_n], dim=1)))
        h = _keep(active, h_new, h)
    return torch.stack(outputs), h, torch.stack(workspace)


NONLINEARITIES = ("tanh", "relu")


def check_nonlinearity(nonlinearity):
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


def rnn_reference(input_gates, w_hh, b_hh, h0, lengths=None, nonlinearity="tanh"):
    """The Elman cell of nn.RNN.  input_gates [T, B, H] = x W_ih^T + b_ih;
    returns (output [T, B, H], h_n [B, H], workspace [T, B, H])."""
    check_nonlinearity(nonlinearity)
    act = torch.tanh if nonlinearity == "tanh" else torch.relu
    T, B, _ = input_gates.shape
    dtype, acc = input_gates.dtype, acc_dtype(input_gates.dtype)
    h = h0
    outputs, workspace = [], []
    for t in range(T):
        active = _active(lengths, t, B, input_gates.device)
        pre = input_gates[t].to(acc) + (h @ w_hh.t()).to(acc)
        if b_hh is not None:
            pre = pre + b_hh.to(acc)
        h_acc = act(pre)
        h_new = h_acc.to(dtype)
        outputs.append(_zero_past_end(active, h_new))
        workspace.append(_zero_past_end(active, h_acc))
        h = _keep(active, h_new, h)
    return torch.stack(outputs), h, torch.stack(workspace)
