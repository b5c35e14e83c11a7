"""ONNX Runtime: the CPU provider, and the TensorRT and CUDA execution providers of onnxruntime-gpu.

One engine per model file; each instance opens its own InferenceSession from
the bytes read once, with its share of the CPU threads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elunet.dtypes import BY_ONNXRUNTIME
from elunet.errors import ElunetError
from elunet.model_config import TensorSignature
from elunet.runtime.engine import Engine, Instance, one_input_and_output

# The GPU execution providers, best first; each takes the device id.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def provider_options(provider: str, device_id: int) -> dict:
    """The options a GPU execution provider is opened with."""
    options = {"device_id": device_id}
    if provider == "CUDAExecutionProvider":
        # The CUDA provider runs float32 convolutions and matrix products in TF32 (a 10-bit mantissa) by
        # default, which alone exceeds the fp32 parity tolerance (1e-4); the torch engine turns TF32 off
        # for the same reason.
        options["use_tf32"] = 0
    return options


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def gpu_providers_available() -> list[str]:
    return [p for p in GPU_PROVIDERS if p in available_providers()]


class OnnxRuntimeInstance(Instance):
    def __init__(self, engine: "OnnxRuntimeEngine", index: int, session):
        super().__init__(engine, index)
        self.session = session

    def _infer(self, pixels: np.ndarray) -> np.ndarray:
        engine = self.engine
        feed = {engine.input.name: np.ascontiguousarray(pixels, dtype=engine.input_dtype)}
        (logits,) = self.session.run([engine.output.name], feed)
        return logits.astype(np.float32, copy=False)

    def close(self) -> None:
        self.session = None


class OnnxRuntimeEngine(Engine):
    kind = "onnxruntime"
    platform = "onnxruntime_onnx"

    def __init__(self, model_file: Path, device: str = "cpu", cpu_threads: int = 0):
        """``device``: cpu, auto (a GPU provider when there is one), cuda or cuda:N; ``cpu_threads``:
        intra-op threads of each instance (0: ONNX Runtime's default, every core)."""
        import onnxruntime as ort

        self._ort = ort
        self.model_file = Path(model_file)
        gpu = gpu_providers_available()
        if device == "auto":
            device = "cuda:0" if gpu else "cpu"
        if device == "cpu":
            self._providers: list = ["CPUExecutionProvider"]
        elif not gpu:
            raise ElunetError(
                f"device {device} asked for, but this onnxruntime has no GPU execution provider (it has {available_providers()})",
                hint="pip install 'elunet[gpu]' (onnxruntime-gpu) on a machine with a GPU, or use the CPU",
            )
        else:
            device_id = int(device.split(":")[1]) if ":" in device else 0
            device = f"cuda:{device_id}"
            self._providers = [(p, provider_options(p, device_id)) for p in gpu] + ["CPUExecutionProvider"]
        self.device = device
        self._cpu_threads = cpu_threads
        self._model = self.model_file.read_bytes()
        self._spare: list = [self._open_session()]  # opened to read the signature; the first instance takes it
        session = self._spare[0]
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        input_name, output_name = one_input_and_output(self.model_file, list(inputs), list(outputs))
        self.input = _signature(inputs[input_name], self.model_file)
        self.output = _signature(outputs[output_name], self.model_file)
        self.input_dtype = BY_ONNXRUNTIME[inputs[input_name].type].np
        batch_dim = inputs[input_name].shape[0]
        self.max_batch_size = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        # ONNX Runtime falls back to the CPU silently when CUDA cannot start; report what really runs.
        self.name = f"onnxruntime {ort.__version__} {session.get_providers()[0]}"
        self._count = 0

    def _open_session(self):
        ort = self._ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's notes on fp16 casts etc. are not findings
        # Idle intra-op threads would otherwise spin between batches, taking the CPU
        # that the event loop needs to parse requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = self._cpu_threads
        options.inter_op_num_threads = 1
        # The session opens the bytes, not the file: weights kept beside it (external data, as torch.onnx.export
        # writes for a model of its own, model.onnx.data) are then found only through this folder.
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.model_file.parent))
        return ort.InferenceSession(self._model, options, providers=self._providers)

    def create_instance(self) -> OnnxRuntimeInstance:
        session = self._spare.pop() if self._spare else self._open_session()
        self._count += 1
        return OnnxRuntimeInstance(self, self._count - 1, session)

    def close(self) -> None:
        self._spare.clear()


def _signature(arg, model_file: Path) -> TensorSignature:
    dtype = BY_ONNXRUNTIME.get(arg.type)
    if dtype is None:
        raise ElunetError(f"{model_file}: tensor {arg.name!r} has type {arg.type}, which elunet does not serve", hint="export float32 or float16 models")
    return TensorSignature(arg.name, dtype.v2, tuple(d if isinstance(d, int) and d > 0 else -1 for d in arg.shape[1:]))
