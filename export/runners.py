"""Runners: one interface for everything `elunet verify` compares (Polygraphy's idea).

A runner takes float32 pixels [n, C, H, W] in [0, 1] and returns float32
logits [n, classes]; whatever it computes in internally (fp16 graphs, a
TensorRT engine) it converts at its edges. `elunet verify` feeds the same
batches to the PyTorch reference and to one runner under test, then
compares (see parity.py).

Runners here:
- ``TorchRunner``: the checkpoint's network in PyTorch, float32, CPU (the reference).
- ``OnnxRuntimeRunner``: an ONNX file in ONNX Runtime, on the CUDA execution
  provider when onnxruntime-gpu is installed and a GPU is visible, else the CPU one.
- ``tensorrt``: provided by the plugins stage (it owns TensorRT and the ELU
  plugin library). Contract for it: a module ``elunet.plugins.tensorrt_runner``
  with a class ``TensorRTRunner(Runner)`` constructed as
  ``TensorRTRunner(model_path: Path, *, max_batch_size: int)``; ``model_path``
  is an ONNX file (built into an engine with the ELU plugin registered) or a
  serialized engine (``.plan``); it must accept every batch size from 1 to
  ``max_batch_size``. It is imported only when ``--backend tensorrt`` asks for it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from elunet.contracts import INPUT_NAME, OUTPUT_NAME
from elunet.errors import ElunetError

DEFAULT_BACKEND = "onnxruntime"  # also what `elunet export` verifies with before publishing
BACKENDS = (DEFAULT_BACKEND, "tensorrt")
DEVICES = ("auto", "cpu", "cuda")
TENSORRT_RUNNER_MODULE = "elunet.plugins.tensorrt_runner"


class Runner(ABC):
    """Executes one model: float32 pixels [n, C, H, W] -> float32 logits [n, classes]."""

    #: what ran, for reports: e.g. "onnxruntime 1.32.0 CPUExecutionProvider"
    name: str

    @abstractmethod
    def infer(self, pixels: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:
        """Release sessions and device memory."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TorchRunner(Runner):
    """The reference: a PyTorch network in eval mode, float32, CPU."""

    def __init__(self, model):
        import torch

        self.model = model.eval().float().cpu()
        self.name = f"torch {torch.__version__} cpu float32"

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))).numpy()


class OnnxRuntimeRunner(Runner):
    def __init__(self, model_path: Path, device: str = "auto"):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if device == "cpu" or (device == "auto" and "CUDAExecutionProvider" not in available):
            providers = ["CPUExecutionProvider"]
        elif "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            raise ElunetError(
                f"--device cuda asked for ONNX Runtime's CUDA execution provider, but this onnxruntime has {available}",
                hint="pip install 'elunet[gpu]' (onnxruntime-gpu) on a machine with a GPU, or use --device cpu",
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's notes on fp16 casts etc. are not findings
        self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        # ONNX Runtime falls back to the CPU silently when CUDA cannot start; report what really runs.
        self.name = f"onnxruntime {ort.__version__} {self.session.get_providers()[0]}"

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.float32)})
        return logits.astype(np.float32, copy=False)

    def close(self) -> None:
        self.session = None


def open_runner(backend: str, model_path: Path, *, device: str = "auto", max_batch_size: int) -> Runner:
    """The runner under test for ``model_path``."""
    if backend == DEFAULT_BACKEND:
        return OnnxRuntimeRunner(model_path, device)
    if backend == "tensorrt":
        try:
            module = importlib.import_module(TENSORRT_RUNNER_MODULE)
            runner_class = module.TensorRTRunner
        except ModuleNotFoundError as exc:
            if exc.name == "tensorrt" or (exc.name or "").startswith("tensorrt."):
                raise ElunetError(
                    "--backend tensorrt needs the tensorrt Python package, which is not installed",
                    hint="on a machine with an NVIDIA GPU: pip install 'elunet[tensorrt]'",
                ) from None
            raise ElunetError(
                f"--backend tensorrt needs {TENSORRT_RUNNER_MODULE}, which this elunet does not have",
                hint="install an elunet that includes the plugins stage, or use --backend onnxruntime",
            ) from None
        except AttributeError:
            raise ElunetError(
                f"{TENSORRT_RUNNER_MODULE} has no TensorRTRunner", hint="the plugins stage must provide it (see export/runners.py)"
            ) from None
        return runner_class(Path(model_path), max_batch_size=max_batch_size)
    raise ElunetError(f"unknown backend {backend!r}", hint=f"choose one of: {', '.join(BACKENDS)}")
