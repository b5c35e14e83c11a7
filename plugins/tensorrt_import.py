"""Importing TensorRT and cuda-python, with errors that say how to get them.

Both are imported lazily, inside the functions that need them: `elunet --help`,
`elunet serve` with ONNX Runtime, and the tests run on machines without either.
"""

from __future__ import annotations

from functools import lru_cache

from elunet.errors import ElunetError

# The oldest TensorRT whose ONNX parser prefers a registered plugin over the node's ONNX function; the
# tensorrt extra in pyproject.toml states the same bound (a test holds them equal).
MIN_TENSORRT = (10, 7)

TENSORRT_HINT = (
    "TensorRT needs an NVIDIA GPU machine: use NVIDIA's TensorRT container (NGC, 'tensorrt' image) "
    "or `pip install 'elunet[tensorrt]'` there (the tensorrt wheels download their libraries from NVIDIA's "
    "own package index at install time, so that index must be reachable)"
)


def import_tensorrt():
    """The `tensorrt` module, or an ElunetError naming what is missing."""
    try:
        import tensorrt
    except ImportError as exc:  # also OSError-like failures: a stub wheel without libnvinfer
        raise ElunetError(f"TensorRT is not available here: {exc}", hint=TENSORRT_HINT) from None
    if not hasattr(tensorrt, "Builder"):
        raise ElunetError(
            f"the installed 'tensorrt' package ({getattr(tensorrt, '__file__', '?')}) is a placeholder without "
            "TensorRT's libraries",
            hint=TENSORRT_HINT,
        )
    found = tuple(int(part) for part in tensorrt.__version__.split(".")[:2])
    if found < MIN_TENSORRT:
        wanted = ".".join(map(str, MIN_TENSORRT))
        raise ElunetError(
            f"TensorRT {tensorrt.__version__} is too old: elunet needs {wanted} or newer, whose ONNX parser uses the "
            "registered ELU plugin instead of inlining the EluPlugin node's ONNX function",
            hint=f"pip install 'tensorrt>={wanted}', or use an NGC TensorRT container that ships {wanted} or newer",
        )
    return tensorrt


@lru_cache(maxsize=1)
def tensorrt_logger():
    """One logger for every builder and runtime in the process, as TensorRT expects."""
    trt = import_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


def import_cudart():
    """cuda-python's CUDA runtime bindings (new location first, then the pre-12.6 one)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise ElunetError(
                "the TensorRT runner needs cuda-python for device memory and streams, which is not installed",
                hint="pip install 'elunet[tensorrt]' (brings cuda-python)",
            ) from None
    return cudart


def check_cuda(result):
    """Unwrap a cuda-python call's (error, *values) tuple, raising on an error."""
    cudart = import_cudart()
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(error)
        raise ElunetError(f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
