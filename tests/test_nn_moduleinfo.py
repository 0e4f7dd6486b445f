"""PyTorch's own test inputs for its recurrent modules
(torch.testing._internal.common_modules: ModuleInfo samples and error
inputs), run on rnn_ext's counterparts on each CPU backend: the same
outputs and gradients as nn for every sample, the same exception type and
message for every error input.

The pairs come from rnn_ext.modules.PAIRS, so a module added there is
tested here too."""
import inspect

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

# PyTorch's test helpers import expecttest, which requirements.txt installs
# here but the GPU machine's image lacks: skip this file there rather than
# fail the whole collection.
pytest.importorskip("expecttest")
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402

from _utils import cpu_backends  # noqa: E402
from rnn_ext.modules import PAIRS  # noqa: E402

INFOS = {info.module_cls: info for info in module_db}
CASES = [(nn_cls, ext_cls) for nn_cls, ext_cls in PAIRS if nn_cls in INFOS]
F64 = dict(rtol=1e-10, atol=1e-12)


def test_every_pair_has_a_module_info():
    assert len(CASES) == len(PAIRS)


def flat(value):
    """Every tensor of an input or output, in order (PackedSequence data)."""
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flat(v)]
    return []


def build(cls, constructor_input, backend=None):
    kw = dict(constructor_input.kwargs)
    if backend is not None:
        kw["backend"] = backend
    return cls(*constructor_input.args, **kw)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("nn_cls,ext_cls", CASES, ids=[n.__name__ for n, _ in CASES])
def test_module_info_samples(nn_cls, ext_cls, backend, training):
    if training and backend == "triton":
        pytest.skip("the samples have no dropout: training runs what eval runs (interpreted Triton is slow)")
    info = INFOS[nn_cls]
    extra = {}
    if "with_packed_sequence" in inspect.signature(info.module_inputs_func).parameters:
        extra["with_packed_sequence"] = True  # PyTorch's packed samples too, where it has them
    samples = info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True,
                                      training=training, **extra)
    assert samples
    for k, sample in enumerate(samples):
        if backend == "triton" and k % 2:
            continue  # interpreted Triton takes seconds a sample: every other one (the rest run on cpu, reference)
        torch.manual_seed(k)
        ref = build(nn_cls, sample.constructor_input).double().train(training)
        ext = build(ext_cls, sample.constructor_input, backend).double().train(training)
        ext.load_state_dict(ref.state_dict())
        args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
        inputs = [t for t in flat((args, list(kwargs.values()))) if t.requires_grad]
        torch.manual_seed(k)
        want = flat(ref(*args, **kwargs))
        torch.manual_seed(k)
        got = flat(ext(*args, **kwargs))
        assert [t.shape for t in got] == [t.shape for t in want], k
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **F64, msg=lambda m: f"sample {k}: {m}")
        gen = torch.Generator().manual_seed(k)
        weights = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in want]
        wrt_ref, wrt_ext = inputs + list(ref.parameters()), inputs + list(ext.parameters())
        g_want = torch.autograd.grad(sum((w * c).sum() for w, c in zip(want, weights)), wrt_ref,
                                     allow_unused=True)
        g_got = torch.autograd.grad(sum((g * c).sum() for g, c in zip(got, weights)), wrt_ext,
                                    allow_unused=True)
        for g, w in zip(g_got, g_want):
            if w is None:
                assert g is None or not g.any()
            else:
                torch.testing.assert_close(g, w, **F64, msg=lambda m: f"sample {k} gradient: {m}")


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("nn_cls,ext_cls", CASES, ids=[n.__name__ for n, _ in CASES])
def test_module_info_error_inputs(nn_cls, ext_cls, backend):
    info = INFOS[nn_cls]
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32,
                                           requires_grad=False, training=True)
    assert errors
    for error in errors:
        sample = error.module_error_input
        if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(error.error_type, match=error.error_regex):
                build(ext_cls, sample.constructor_input, backend)
            continue
        module = build(ext_cls, sample.constructor_input, backend)
        with pytest.raises(error.error_type, match=error.error_regex):
            module(*sample.forward_input.args, **sample.forward_input.kwargs)
