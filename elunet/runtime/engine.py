"""The one interface for running a model: an ``Engine`` (the loaded model) and its ``Instance``s.

An engine is what is loaded once per model version: an ONNX Runtime model, a
deserialized TensorRT engine, a PyTorch checkpoint. An instance (Triton's
model instance) owns everything one computation needs: its ONNX Runtime
session, its TensorRT execution context, CUDA stream and device buffers, its
copy of the network. A batch runs on exactly one instance, and an instance
runs one batch at a time: ``Instance.infer`` refuses to be entered twice at
once (``InstanceBusy``), so a scheduler that broke that rule fails loudly
instead of computing silently wrong logits on shared buffers.

Every instance takes the model's one input as float32 [n, *input dims] and
returns its one output as float32 [n, *output dims], whatever its model
computes in; the tensors' names are the model file's (``one_input_and_output``).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

import numpy as np

from elunet.errors import ElunetError
from elunet.model_config import TensorSignature


def one_input_and_output(model_file, inputs: list[str], outputs: list[str]) -> tuple[str, str]:
    """The names of a model file's one input and one output, whatever they are; a clear refusal for any other count."""
    if len(inputs) != 1 or len(outputs) != 1:
        raise ElunetError(
            f"{model_file} has inputs {inputs} and outputs {outputs}; elunet serves models with exactly one input and one output",
            hint="export the model with one input (the image batch) and one output (the scores), or serve it with Triton",
        )
    return inputs[0], outputs[0]


class InstanceBusy(RuntimeError):
    """An instance was asked to compute while it was already computing."""


class Instance(ABC):
    def __init__(self, engine: "Engine", index: int):
        self.engine = engine
        self.index = index
        self.executions = 0  # batches computed
        self.overlaps = 0  # calls refused because the instance was busy (must stay 0)
        self._busy = threading.Lock()

    @property
    def name(self) -> str:
        return self.engine.name

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        if not self._busy.acquire(blocking=False):
            self.overlaps += 1
            raise InstanceBusy(f"instance {self.index} of {self.engine.name} is already computing a batch")
        try:
            logits = self._infer(pixels)
            self.executions += 1
            return logits
        finally:
            self._busy.release()

    @abstractmethod
    def _infer(self, pixels: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:
        """Release this instance's session, context and buffers."""


class Engine(ABC):
    #: "onnxruntime", "tensorrt" or "torch"
    kind: str
    #: the Triton platform name of what runs (see elunet.runtime.PLATFORMS)
    platform: str
    #: where it runs: "cpu", "cuda:0", ...
    device: str
    #: what actually executes (library version, execution provider, file), for reports and logs
    name: str
    #: the model file's own batch limit (a fixed batch axis, a TensorRT profile); None: unbounded
    max_batch_size: int | None = None
    input: TensorSignature
    output: TensorSignature

    @abstractmethod
    def create_instance(self) -> Instance:
        """A new instance with its own session/context and buffers."""

    def close(self) -> None:
        """Release what the instances share (the engine, the model bytes)."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
