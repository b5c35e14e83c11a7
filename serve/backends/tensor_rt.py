"""TensorRT: the engine (``model.plan``) run by the plugins stage's runner, ELU plugin library loaded.

The runner (``elunet.plugins.tensorrt_runner.TensorRTRunner``, contract in
export/runners.py) owns TensorRT, the plugin library, CUDA buffers and the
stream; this backend only adapts it to the serving interface.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elunet.errors import ElunetError
from elunet.serve.backends.base import Backend


class TensorRTBackend(Backend):
    kind = "tensorrt"

    def __init__(self, engine_file: Path, device: str, max_batch_size: int):
        from elunet.export.runners import open_runner

        if device not in ("cuda", "cuda:0"):
            raise ElunetError(
                f"the TensorRT backend runs on the first visible GPU, got --device {device}",
                hint="select the GPU with CUDA_VISIBLE_DEVICES=N and use --device cuda",
            )
        self._runner = open_runner("tensorrt", engine_file, max_batch_size=max_batch_size)
        self.device = "cuda:0"
        self.detail = f"{self._runner.name} ({engine_file.name})"
        self.max_batch_size = max_batch_size

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        return self._runner.infer(pixels)

    def close(self) -> None:
        self._runner.close()
