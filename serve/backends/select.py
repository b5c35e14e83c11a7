"""Choose and open the backend for one model version.

``auto`` prefers the fastest thing this machine can run: TensorRT (a
``model.plan`` engine and the tensorrt package), then ONNX Runtime on CUDA
(onnxruntime-gpu), then ONNX Runtime on the CPU. ELU-plugin exports run in
ONNX Runtime too, through the ONNX function the exporter attaches to the
plugin op. Where ONNX Runtime cannot run a version (an engine-only folder) or a GPU was
asked for that neither TensorRT nor ONNX Runtime can use, it serves the
version folder's checkpoint with torch, if torch is installed. It logs what
it picked and why each better option was passed over.
"""

from __future__ import annotations

import importlib.util
import logging

from elunet.contracts import WEIGHTS_FILE
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
    """(backend, device, why): TensorRT > ONNX Runtime CUDA > ONNX Runtime CPU, and torch where ONNX Runtime cannot."""
    passed_over = []
    ort_obstacle = _onnxruntime_obstacle(version)
    torch_ok = _installed("torch") and (version.path / WEIGHTS_FILE).is_file()
    if device == "cpu":
        passed_over.append("GPU backends skipped because --device cpu")
    else:
        gpu = device or "cuda:0"
        if not version.model_file("tensorrt_plan").is_file():
            passed_over.append("TensorRT: no model.plan in the version folder")
        elif not _installed("tensorrt"):
            passed_over.append("TensorRT: the tensorrt package is not installed (pip install 'elunet[tensorrt]')")
        else:
            return "tensorrt", gpu, "model.plan present and tensorrt importable"
        from elunet.serve.backends.onnx_runtime import gpu_providers_available

        if ort_obstacle:
            passed_over.append(f"ONNX Runtime: {ort_obstacle}")
        elif gpu_providers_available():
            return "onnxruntime", gpu, f"onnxruntime has {', '.join(gpu_providers_available())}; " + "; ".join(passed_over)
        else:
            passed_over.append("ONNX Runtime CUDA: this onnxruntime has no CUDA provider (pip install 'elunet[gpu]')")
        if device is not None:  # a GPU was asked for explicitly: torch is the last GPU path
            if torch_ok:
                return "torch", gpu, "; ".join(passed_over)
            raise ElunetError(
                f"--device {device} asked for a GPU, but no GPU backend can run here: " + "; ".join(passed_over),
                hint="install tensorrt, onnxruntime-gpu or torch (CUDA build), or use --device cpu",
            )
    if not ort_obstacle:
        return "onnxruntime", "cpu", "; ".join(passed_over)
    if ort_obstacle not in " ".join(passed_over):
        passed_over.append(f"ONNX Runtime: {ort_obstacle}")
    if torch_ok:
        return "torch", "cpu", "; ".join(passed_over) + f"; the version folder's {WEIGHTS_FILE} runs in torch"
    raise ElunetError(
        f"no backend here can run model {version.name} v{version.version}: " + "; ".join(passed_over),
        hint="install TensorRT on a GPU host, or torch to serve the checkpoint, or leave the model out with --models",
    )


def _installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (a broken install counts as absent)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _onnxruntime_obstacle(version: ModelVersion) -> str | None:
    """Why ONNX Runtime cannot run this version (None: it can)."""
    if not version.model_file("onnxruntime_onnx").is_file():
        return f"no {version.model_file('onnxruntime_onnx').name} in the version folder"
    return None


def _model_file(version: ModelVersion, platform: str):
    path = version.model_file(platform)
    if not path.is_file():
        raise ElunetError(
            f"model {version.name} v{version.version} has no {path.name} in {version.path}",
            hint="export it with `elunet export` (ONNX) or build the engine with the TensorRT tools, or pick another --backend",
        )
    return path


def _check_runs_in_onnxruntime(version: ModelVersion) -> None:
    obstacle = _onnxruntime_obstacle(version)
    if obstacle:
        raise ElunetError(
            f"--backend onnxruntime cannot serve model {version.name} v{version.version}: {obstacle}",
            hint="serve it with --backend tensorrt (or torch, from the version folder's checkpoint), or export it to ONNX with `elunet export`",
        )
