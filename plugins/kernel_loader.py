"""The ELU CUDA kernel on a GPU without TensorRT, driven from PyTorch tensors.

Two ways to get the same kernel source (plugins/elu/) onto the GPU:
- ``nvcc``: compile elu_kernel.cu into a shared library and call its C ABI
  launcher (``elunet_elu_launch``, the function the TensorRT plugin calls);
- ``nvrtc``: compile elu_kernel.cuh at run time with NVRTC (through PyTorch,
  which ships NVRTC), for GPU machines without the CUDA toolkit.

Used by the GPU kernel test and the bandwidth benchmark.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

ELU_DIR = Path(__file__).resolve().parent / "elu"
LOADERS = ("nvcc", "nvrtc")
THREADS = 256
BLOCKS_PER_SM = 8  # as elu_kernel.cu: a grid of a few waves, the loop covers the rest
VECTOR_BYTES = 16


@lru_cache(maxsize=1)
def dtype_codes() -> dict[str, int]:
    """{'FLOAT32': 0, ...} as elu_kernel.h defines them (read from the header, not restated)."""
    header = (ELU_DIR / "elu_kernel.h").read_text()
    return {name: int(value) for name, value in re.findall(r"ELUNET_ELU_(\w+) = (\d+)", header)}


def _torch_dtype_name(tensor) -> str:
    return {"torch.float32": "FLOAT32", "torch.float16": "FLOAT16", "torch.bfloat16": "BFLOAT16"}[str(tensor.dtype)]


class NvccKernel:
    """elu_kernel.cu built with nvcc for this GPU, called through its C ABI."""

    def __init__(self) -> None:
        import torch

        nvcc = shutil.which("nvcc")
        if nvcc is None:
            raise RuntimeError("nvcc not found on PATH")
        major, minor = torch.cuda.get_device_capability()
        self._dir = tempfile.mkdtemp(prefix="elunet-elu-")
        lib = Path(self._dir) / "libelunet_elu_kernel.so"
        subprocess.run([nvcc, "-shared", "-O3", "-Xcompiler", "-fPIC", f"-arch=sm_{major}{minor}",
                        str(ELU_DIR / "elu_kernel.cu"), "-o", str(lib)], check=True, capture_output=True, text=True)
        self._lib = ctypes.CDLL(str(lib))
        self._lib.elunet_elu_launch.restype = ctypes.c_int
        self._lib.elunet_elu_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32,
                                                ctypes.c_float, ctypes.c_void_p]

    def __call__(self, x, y, alpha: float) -> None:
        import torch

        status = self._lib.elunet_elu_launch(x.data_ptr(), y.data_ptr(), x.numel(), dtype_codes()[_torch_dtype_name(x)],
                                             alpha, torch.cuda.current_stream().cuda_stream)
        if status != 0:
            raise RuntimeError(f"elunet_elu_launch returned cudaError {status}")


NVRTC_TYPES = {"FLOAT32": "float", "FLOAT16": "__half", "BFLOAT16": "__nv_bfloat16"}


def nvrtc_source(name: str) -> tuple[str, str]:
    """(entry kernel name, source) of the NVRTC entry point for one dtype: a thin wrapper over elu_kernel.cuh."""
    entry = f"elunet_elu_{name.lower()}"
    ctype = NVRTC_TYPES[name]
    return entry, (f'#include "elu_kernel.cuh"\nextern "C" __global__ void {entry}'
                   f"({ctype} const* x, {ctype}* y, long long n, float alpha)\n"
                   "{ elunet::eluGridStride(x, y, n, alpha); }\n")


def cuda_header_root() -> Path | None:
    """A folder whose include/ has cuda_fp16.h: the toolkit, else the CUDA runtime wheel PyTorch depends on."""
    import importlib.util
    import os

    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for package in ("nvidia.cuda_runtime", "nvidia.cu13", "nvidia.cu12"):
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            spec = None
        roots += list(spec.submodule_search_locations or []) if spec else []
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda_fp16.h").is_file():
            return Path(root)
    return None


class NvrtcKernel:
    """elu_kernel.cuh compiled by NVRTC (via torch.cuda._compile_kernel), launched on the current stream."""

    def __init__(self) -> None:
        import torch
        import torch.utils.cpp_extension as cpp_extension

        compile_kernel = getattr(torch.cuda, "_compile_kernel", None)
        if compile_kernel is None:
            raise RuntimeError(f"torch {torch.__version__} has no torch.cuda._compile_kernel (NVRTC)")
        if cpp_extension.CUDA_HOME is None:
            # PyTorch asks CUDA_HOME for cuda_fp16.h; on a machine without the toolkit the
            # CUDA runtime wheel PyTorch installed has the headers.
            root = cuda_header_root()
            if root is None:
                raise RuntimeError("no CUDA headers (cuda_fp16.h) found for NVRTC: set CUDA_HOME")
            cpp_extension.CUDA_HOME = str(root)
        self._kernels = {}
        for name in NVRTC_TYPES:
            entry, source = nvrtc_source(name)
            self._kernels[name] = compile_kernel(source, entry, cuda_include_dirs=[str(ELU_DIR)])
        self._sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
        self._libcuda = torch.cuda._utils._get_gpu_runtime_library()

    def __call__(self, x, y, alpha: float) -> None:
        import torch

        n = x.numel()
        if n == 0:
            return
        per_block = THREADS * (VECTOR_BYTES // x.element_size())
        blocks = min((n + per_block - 1) // per_block, self._sms * BLOCKS_PER_SM)
        args = [ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()), ctypes.c_longlong(n),
                ctypes.c_float(alpha)]
        pointers = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.byref(a), ctypes.c_void_p) for a in args])
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        status = self._libcuda.cuLaunchKernel(self._kernels[_torch_dtype_name(x)].func, blocks, 1, 1, THREADS, 1, 1,
                                              0, stream, pointers, None)
        if status != 0:
            raise RuntimeError(f"cuLaunchKernel returned CUresult {status}")


def load_kernel(loader: str):
    """The kernel as a callable ``kernel(x, y, alpha)`` on CUDA tensors (x may be y)."""
    return {"nvcc": NvccKernel, "nvrtc": NvrtcKernel}[loader]()
