"""Which engine runs a model-repository version (``--backend auto``), and why.

``auto`` prefers the fastest thing this machine can run: TensorRT (a
``model.plan`` engine and the tensorrt package), then ONNX Runtime on a GPU
(onnxruntime-gpu), then ONNX Runtime on the CPU. ELU-plugin exports run in
ONNX Runtime too, through the ONNX function the exporter attaches to the
plugin op. Where ONNX Runtime cannot run a version (an engine-only folder)
or a GPU was asked for that neither TensorRT nor ONNX Runtime can use, the
version folder's checkpoint runs in torch, if torch is installed. The reason
names every better option that was passed over.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from elunet.contracts import WEIGHTS_FILE
from elunet.errors import ElunetError
from elunet.repository import ModelVersion


@dataclass(frozen=True)
class Choice:
    kind: str
    device: str
    path: Path  # what the engine opens: the model file, or the version folder for torch
    why: str = ""


def choose_engine(version: ModelVersion, kind: str, device: str | None) -> Choice:
    """The engine for ``version``: ``kind`` is auto or one of elunet.runtime.ENGINES; ``device`` None lets auto decide
    (tensorrt: cuda:0, onnxruntime and torch: cpu)."""
    if kind == "auto":
        kind, device, why = _auto(version, device)
    else:
        why = f"--backend {kind}"
    # TensorRT has no CPU path: without --device it would open on "cpu" and be refused, which is what the
    # serve-trt image (it sets only the backend) did to every model.
    device = device or ("cuda:0" if kind == "tensorrt" else "cpu")
    if kind == "onnxruntime":
        obstacle = _onnxruntime_obstacle(version)
        if obstacle:
            raise ElunetError(
                f"--backend onnxruntime cannot serve model {version.name} v{version.version}: {obstacle}",
                hint="serve it with --backend tensorrt (or torch, from the version folder's checkpoint), or export it to ONNX with `elunet export`",
            )
        return Choice(kind, device, version.model_file("onnxruntime_onnx"), why)
    if kind == "tensorrt":
        return Choice(kind, device, _model_file(version, "tensorrt_plan"), why)
    if kind == "torch":
        return Choice(kind, device, version.path, why)
    raise ElunetError(f"unknown backend {kind!r}", hint="use auto, onnxruntime, tensorrt or torch")


def _auto(version: ModelVersion, device: str | None) -> tuple[str, str, str]:
    """(kind, device, why): TensorRT > ONNX Runtime GPU > ONNX Runtime CPU, and torch where ONNX Runtime cannot."""
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
        from elunet.runtime.onnxruntime_engine import gpu_providers_available

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


def _model_file(version: ModelVersion, platform: str) -> Path:
    path = version.model_file(platform)
    if not path.is_file():
        raise ElunetError(
            f"model {version.name} v{version.version} has no {path.name} in {version.path}",
            hint="export it with `elunet export` (ONNX) or build the engine with the TensorRT tools, or pick another --backend",
        )
    return path
