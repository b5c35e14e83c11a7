"""Running a model: the engines that `elunet verify`, `elunet serve` and `elunet build-engine` share.

``open_engine(kind, path, ...)`` loads a model once; ``engine.create_instance()``
gives each concurrent user its own session or execution context (see
engine.py). One module per engine, each importing its library only when
opened, so importing this package never imports torch, onnxruntime or
TensorRT:

- ``onnxruntime``: an ONNX file on ONNX Runtime's CPU provider, or its
  TensorRT / CUDA execution providers (onnxruntime-gpu);
- ``tensorrt``: a TensorRT engine (``.plan``), natively, the ELU plugin loaded where it uses it;
- ``torch``: a checkpoint folder (or a model-repository version folder) in PyTorch.

``choose.py`` picks one for a model-repository version (``auto``).
"""

from __future__ import annotations

from pathlib import Path

from elunet.errors import ElunetError
from elunet.runtime.engine import Engine, Instance, InstanceBusy

ENGINES = ("onnxruntime", "tensorrt", "torch")
# Triton's platform names for what each engine runs (torch: a checkpoint, which Triton has no platform for).
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "torch": "elunet_torch"}

__all__ = ["ENGINES", "PLATFORMS", "Engine", "Instance", "InstanceBusy", "open_engine"]


def open_engine(kind: str, path: Path, *, device: str = "cpu", cpu_threads: int = 0, max_batch_size: int | None = None) -> Engine:
    """Load ``path`` on engine ``kind``.

    ``device``: cpu, auto, cuda or cuda:N. ``cpu_threads``: intra-op threads of
    each instance (0: the library's default). ``max_batch_size``: the largest
    batch a TensorRT engine is built or allocated for (None: its profile's).
    """
    path = Path(path)
    if kind == "onnxruntime":
        from elunet.runtime.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, device, cpu_threads)
    if kind == "tensorrt":
        from elunet.runtime.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(path, device, max_batch_size=max_batch_size)
    if kind == "torch":
        from elunet.runtime.torch_engine import TorchEngine

        return TorchEngine(path, device, cpu_threads)
    raise ElunetError(f"unknown engine {kind!r}", hint=f"choose one of: {', '.join(ENGINES)}")
