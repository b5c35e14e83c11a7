"""PyTorch, from the checkpoint that every model-repository version folder also is.

The GPU path that runs where neither TensorRT nor onnxruntime-gpu is
installed. torch is imported here only, when this backend is chosen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elunet.serve.backends.base import Backend


class TorchBackend(Backend):
    kind = "torch"

    def __init__(self, version_dir: Path, device: str = "cpu", cpu_threads: int = 0):
        import torch

        from elunet.train.checkpoint import load_checkpoint

        if device.startswith("cuda") and not torch.cuda.is_available():
            from elunet.errors import ElunetError

            raise ElunetError(f"device {device} requested, but torch sees no CUDA GPU", hint="use --device cpu")
        if device.startswith("cuda"):
            # Serve float32 as float32: TF32 convolutions/matmuls would break parity with the CPU reference.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        if cpu_threads:
            torch.set_num_threads(cpu_threads)  # process-wide; every torch model here gets the same share
        self._torch = torch
        self._device = torch.device(device)
        self.model = load_checkpoint(version_dir).model.to(self._device).eval()
        self.device = device
        self.detail = f"torch {torch.__version__} ({version_dir.name}/ checkpoint, fp32)"

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self._device, non_blocking=True)
            return self.model(x).float().cpu().numpy()
