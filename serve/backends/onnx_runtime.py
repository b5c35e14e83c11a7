"""ONNX Runtime: CPU, and CUDA / TensorRT execution providers when onnxruntime-gpu is installed."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from elunet.contracts import INPUT_NAME, OUTPUT_NAME
from elunet.errors import ElunetError
from elunet.serve.backends.base import Backend

log = logging.getLogger("elunet.serve")

# The GPU execution providers, best first; each takes the device id.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def gpu_providers_available() -> list[str]:
    return [p for p in GPU_PROVIDERS if p in available_providers()]


class OnnxRuntimeBackend(Backend):
    kind = "onnxruntime"

    def __init__(self, model_file: Path, device: str = "cpu", cpu_threads: int = 0):
        import onnxruntime as ort

        if device == "cpu":
            providers: list = ["CPUExecutionProvider"]
        else:
            gpu = gpu_providers_available()
            if not gpu:
                raise ElunetError(
                    f"device {device} requested, but this onnxruntime has no GPU execution provider (it has {available_providers()})",
                    hint="pip install 'elunet[gpu]' (onnxruntime-gpu), or use --device cpu, or --backend torch",
                )
            device_id = int(device.split(":")[1]) if ":" in device else 0
            providers = [(p, {"device_id": device_id}) for p in gpu] + ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads would otherwise spin between batches, taking the CPU
        # that the event loop needs to parse requests (measured: ~1.5x raw throughput
        # on a busy 2-core host with spinning off).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = cpu_threads
        self.session = ort.InferenceSession(str(model_file), options, providers=providers)
        self.device = device
        self.detail = f"{self.session.get_providers()[0]} ({model_file.name})"
        inputs = {i.name: i for i in self.session.get_inputs()}
        if INPUT_NAME not in inputs:
            raise ElunetError(f"{model_file} has inputs {sorted(inputs)}, expected {INPUT_NAME!r}", hint="re-export the model with `elunet export`")
        graph_input = inputs[INPUT_NAME]
        self._dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
        self.datatype = "FP16" if self._dtype == np.float16 else "FP32"
        batch_dim = graph_input.shape[0]
        self.max_batch_size = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        feed = {INPUT_NAME: np.ascontiguousarray(pixels, dtype=self._dtype)}
        (logits,) = self.session.run([OUTPUT_NAME], feed)
        return logits.astype(np.float32, copy=False)
