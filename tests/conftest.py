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
