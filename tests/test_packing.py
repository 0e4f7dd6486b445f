"""The modules' packed-input layout (rnn_ext.modules._Packing): pad() and
pack() give what torch's pad_packed_sequence and pack_padded_sequence give,
values and gradients, on the CPU index path."""
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnn_ext.modules import _Packing


@pytest.mark.parametrize("lengths", [[5, 5, 3, 1], [1], [7, 2, 2, 2, 1, 1], [3, 3, 3]])
def test_pad_and_pack_match_torch(lengths):
    g = torch.Generator().manual_seed(len(lengths))
    T, B = lengths[0], len(lengths)
    padded = torch.randn(T, B, 3, generator=g, dtype=torch.float64)
    packed = pack_padded_sequence(padded, torch.tensor(lengths))
    packing = _Packing(packed.batch_sizes, padded.device)
    assert packing.rows is not None, "the CPU takes the index path"
    assert torch.equal(packing.lengths, torch.tensor(lengths))

    data = packed.data.clone().requires_grad_()
    ours = packing.pad(data)
    want_data = packed.data.clone().requires_grad_()
    want = pad_packed_sequence(PackedSequence(want_data, packed.batch_sizes), total_length=T)[0]
    assert torch.equal(ours, want)
    dy = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    ours.backward(dy)
    want.backward(dy)
    assert torch.equal(data.grad, want_data.grad)

    x = padded.clone().requires_grad_()
    x_ref = padded.clone().requires_grad_()
    ours = packing.pack(x)
    want = pack_padded_sequence(x_ref, torch.tensor(lengths)).data
    assert torch.equal(ours, want)
    dd = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    ours.backward(dd)
    want.backward(dd)
    assert torch.equal(x.grad, x_ref.grad)
    assert torch.autograd.gradcheck(packing.pad, (packed.data.clone().requires_grad_(),))
