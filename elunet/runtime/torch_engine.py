"""PyTorch, from a checkpoint folder (every model-repository version folder is one too).

The reference `elunet verify` compares against, and the serving path where
neither TensorRT nor onnxruntime-gpu is installed. torch is imported only
when this engine is opened.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from elunet.contracts import INPUT_NAME, OUTPUT_NAME
from elunet.errors import ElunetError
from elunet.model_config import TensorSignature
from elunet.runtime.engine import Engine, Instance


class TorchInstance(Instance):
    def __init__(self, engine: "TorchEngine", index: int, model):
        super().__init__(engine, index)
        self.model = model

    def _infer(self, pixels: np.ndarray) -> np.ndarray:
        torch = self.engine.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.engine.torch_device, non_blocking=True)
            return self.model(x).float().cpu().numpy()

    def close(self) -> None:
        self.model = None


class TorchEngine(Engine):
    kind = "torch"
    # Triton has no platform for a safetensors checkpoint; elunet names it so in model metadata.
    platform = "elunet_torch"

    def __init__(self, checkpoint_dir: Path, device: str = "cpu", cpu_threads: int = 0):
        import torch

        from elunet.train.checkpoint import load_checkpoint

        if device == "auto":
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ElunetError(f"device {device} asked for, but torch sees no CUDA GPU", hint="use the CPU, or install a CUDA build of torch")
        if device.startswith("cuda"):
            # float32 stays float32: TF32 convolutions/matmuls would break parity with the CPU reference.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        if cpu_threads:
            torch.set_num_threads(cpu_threads)  # process-wide: every torch instance gets the same share
        self.torch = torch
        self.torch_device = torch.device(device)
        self.device = device
        loaded = load_checkpoint(checkpoint_dir)
        self._model = loaded.model.to(self.torch_device).eval()
        card = loaded.card
        self.input = TensorSignature(INPUT_NAME, "FP32", tuple(card.input_shape))
        self.output = TensorSignature(OUTPUT_NAME, "FP32", (card.num_classes,))
        self.name = f"torch {torch.__version__} {device} float32 ({Path(checkpoint_dir).name}/ checkpoint)"
        self._count = 0

    def create_instance(self) -> TorchInstance:
        # Each instance has its own copy of the network: nothing is shared between two batches.
        model = self._model if self._count == 0 else copy.deepcopy(self._model)
        self._count += 1
        return TorchInstance(self, self._count - 1, model)
