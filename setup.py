"""Builds rnn_ext._C: CPU sources always, CUDA sources when PyTorch is a CUDA
build and nvcc is found (a GPU need not be present).

Environment:
  RNN_EXT_CPU_ONLY=1      build without CUDA even where it could be built
  TORCH_CUDA_ARCH_LIST    CUDA architectures (default "8.0;9.0")
  MAX_JOBS                parallel compile jobs (ninja)
"""
import glob
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))

# PyTorch guesses CUDA_HOME from the nvcc on PATH; where that nvcc is a
# wrapper script (as in /usr/local/bin), the guess misses the toolkit.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def want_cuda():
    if os.environ.get("RNN_EXT_CPU_ONLY", "0") not in ("", "0"):
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def nvidia_include_dirs():
    """Headers of the CUDA libraries that pip-installed PyTorch brings along
    (cuBLAS, cuSPARSE, ...), under site-packages/nvidia/*/include."""
    dirs = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
        dirs += glob.glob(os.path.join(site, "nvidia", "cu*", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def cublaslt_library():
    """The cuBLASLt library PyTorch itself loads (the stepwise CUDA loop calls
    it directly: csrc/ops/cublas_gemm.h), by full path: pip's packages ship
    only the versioned name (libcublasLt.so.13), which -lcublasLt misses.
    None where it is not found: the symbols then resolve at load time
    through libtorch_cuda, which depends on it."""
    dirs = [os.path.join(site, "nvidia", *parts, "lib") for site in sys.path
            for parts in (("*",), ("cu*",), ("cu*", "*"))]
    if cpp_extension.CUDA_HOME:
        dirs.append(os.path.join(cpp_extension.CUDA_HOME, "lib64"))
    for d in dirs:
        found = sorted(glob.glob(os.path.join(d, "libcublasLt.so*")))
        if found:
            return found[0]
    return None


def extension():
    csrc = os.path.join(ROOT, "csrc")
    sources = ["csrc/ops/module.cpp", "csrc/ops/rnn_ops.cpp", "csrc/ops/rnn_ops_cpu.cpp",
               "csrc/ops/cell_autograd.cpp", "csrc/ops/buffer_pool.cpp",
               "csrc/ops/onednn_products.cpp"]
    include_dirs = [csrc, os.path.join(csrc, "include")]
    # -fno-trapping-math lets the CPU step loops vectorise their selects
    # (csrc/cpu/rnn_cpu.h); IEEE results are unchanged.
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math"]
    macros = []
    if want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += ["csrc/ops/rnn_ops_cuda.cpp", "csrc/cuda/rnn_cuda.cu", "csrc/cuda/persistent.cu"]
        macros.append(("RNN_EXT_WITH_CUDA", None))
        # -idirafter: the toolkit's own headers win; the pip packages' headers
        # (cuBLAS, cuSPARSE, ... which the toolkit may lack) fill the gaps.
        after = [f for d in nvidia_include_dirs() for f in ("-idirafter", d)]
        lt = cublaslt_library()
        return cpp_extension.CUDAExtension(
            "rnn_ext._C",
            sources,
            include_dirs=include_dirs,
            define_macros=macros,
            extra_compile_args={"cxx": cxx + after, "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=["-fopenmp"] + ([lt] if lt else []),
        )
    return cpp_extension.CppExtension(
        "rnn_ext._C",
        sources,
        include_dirs=include_dirs,
        define_macros=macros,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="rnn_ext",
    version="0.1.0",
    description="Fused LSTM and GRU kernels for PyTorch (CPU, CUDA C++, Triton)",
    packages=find_packages(include=["rnn_ext", "rnn_ext.*"]),
    # The Triton crossover's table (triton/persistent_sm90.json) and auto's
    # table where a GPU run wrote one (auto_table.json).
    package_data={"rnn_ext": ["*.json"], "rnn_ext.triton": ["*.json"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    python_requires=">=3.10",
)
