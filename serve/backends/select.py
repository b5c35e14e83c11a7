"""Choose and open the backend for one model version.

``auto`` prefers the fastest thing this machine can run: TensorRT (a
``model.plan`` engine and the tensorrt package), then ONNX Runtime on CUDA
(onnxruntime-gpu), then ONNX Runtime on the CPU. It logs what it picked and
why each better option was passed over.
"""

from __future__ import annotations

import importlib.util
import logging

from elunet.errors import ElunetError
from elunet.repository import ModelVersion
from elunet.serve.backends.base import Backend

log = logging.getLogger("elunet.serve")


def open_backend(version: ModelVersion, backend: str, device: str | None, max_batch_size: int, cpu_threads: int = 0) -> Backend:
    """Open ``version`` on ``backend``; ``cpu_threads`` is each inference's CPU thread count (0: the library's default)."""
    if backend == "auto":
        backend, device, why = _auto(version, device)
        log.info("model %s v%d: auto picked %s on %s: %s", version.name, version.version, backend, device, why)
    device = device or "cpu"
    if backend == "onnxruntime":
        _check_runs_in_onnxruntime(version)
        from elunet.serve.backends.onnx_runtime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(_model_file(version, "onnxruntime_onnx"), device, cpu_threads)
    if backend == "tensorrt":
        from elunet.serve.backends.tensor_rt import TensorRTBackend

        return TensorRTBackend(_model_file(version, "tensorrt_plan"), device, max_batch_size)
    if backend == "torch":
        from elunet.serve.backends.torch_checkpoint import TorchBackend

        return TorchBackend(version.path, device, cpu_threads)
    raise ElunetError(f"unknown backend {backend!r}", hint="use auto, onnxruntime, tensorrt or torch")


def _auto(version: ModelVersion, device: str | None) -> tuple[str, str, str]:
    passed_over = []
    if device == "cpu":
        passed_over.append("GPU backends skipped because --device cpu")
    else:
        gpu = device or "cuda:0"
        if not version.model_file("tensorrt_plan").is_file():
            passed_over.append("TensorRT: no model.plan in the version folder")
        elif importlib.util.find_spec("tensorrt") is None:
            passed_over.append("TensorRT: the tensorrt package is not installed (pip install 'elunet[tensorrt]')")
        else:
            return "tensorrt", gpu, "model.plan present and tensorrt importable"
        from elunet.serve.backends.onnx_runtime import gpu_providers_available

        if gpu_providers_available():
            return "onnxruntime", gpu, f"onnxruntime has {', '.join(gpu_providers_available())}; " + "; ".join(passed_over)
        passed_over.append("ONNX Runtime CUDA: this onnxruntime has no CUDA provider (pip install 'elunet[gpu]')")
        if device is not None:
            raise ElunetError(
                f"--device {device} asked for a GPU, but no GPU backend can run here: " + "; ".join(passed_over),
                hint="install tensorrt or onnxruntime-gpu, use --backend torch --device cuda, or --device cpu",
            )
    return "onnxruntime", "cpu", "; ".join(passed_over)


def _model_file(version: ModelVersion, platform: str):
    path = version.model_file(platform)
    if not path.is_file():
        raise ElunetError(
            f"model {version.name} v{version.version} has no {path.name} in {version.path}",
            hint="export it with `elunet export` (ONNX) or build the engine with the TensorRT tools, or pick another --backend",
        )
    return path


def _check_runs_in_onnxruntime(version: ModelVersion) -> None:
    export = version.card.export
    if export is not None and export.elu_mode == "plugin":
        raise ElunetError(
            f"model {version.name} v{version.version} was exported with the custom ELU plugin op, which ONNX Runtime cannot run",
            hint="serve it with --backend tensorrt, or export with the native Elu op",
        )
