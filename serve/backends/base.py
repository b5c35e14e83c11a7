"""The one interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    """Runs one model version: float32 pixels [n, C, H, W] in [0, 1] -> float32 logits [n, classes].

    ``infer`` is called from worker threads, one batch at a time per thread;
    implementations must be safe to call from several threads at once.
    """

    #: "onnxruntime", "tensorrt" or "torch"
    kind: str
    #: where it runs, e.g. "cpu", "cuda:0"
    device: str
    #: what actually executes (execution provider, engine file, ...), for logs and /v2/models
    detail: str
    #: the largest batch the model itself accepts (None: unbounded)
    max_batch_size: int | None = None
    #: the V2 datatype the model computes in ("FP32" or "FP16"), reported in model metadata
    datatype: str = "FP32"

    @abstractmethod
    def infer(self, pixels: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:
        """Release device memory and sessions."""
