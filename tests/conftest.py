import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Without a CUDA GPU, the Triton kernels run under the Triton interpreter on
# the CPU.  It must be switched on before rnn_ext.triton's kernels are
# defined (imported); then backend "triton" is one of the CPU backends of
# the test suite (_utils.cpu_backends()).
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 is compared with torch.nn (cuDNN on a GPU) in full fp32 precision:
    TF32 off for cuBLAS and cuDNN alike in every test.  A test about TF32
    turns it on with _utils.tf32(True)."""
    from _utils import tf32

    with tf32(False):
        yield
