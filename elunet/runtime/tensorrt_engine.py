"""TensorRT, natively: one deserialized engine per model version, one execution context per instance.

TensorRT allows several execution contexts of one engine to run at once, each
on its own stream with its own device buffers; a context itself must never run
two inferences at once. So an instance owns a context, a CUDA stream and its
input/output buffers, and the engine only holds what is shared (the
deserialized ``ICudaEngine``). cuda-python manages memory and streams; no
PyTorch.

An engine holding EluPlugin layers deserializes only once the plugin's
creator is registered, and a native-Elu engine needs no plugin at all, so
the plugin library is loaded only for engines that use it. A serialized
engine cannot be asked before it is deserialized, so the answer comes from
the model card that `elunet build-engine` publishes beside it
(``export.elu_mode``: build-engine refuses a plugin export whose engine lost
its plugin layers, so the card's mode is the engine's). An ONNX file is
inspected directly (its EluPlugin nodes).

``model_path`` is a serialized engine (``.plan``, ``.engine``) or an ONNX file,
which is built into an engine first. Batches larger than the engine's
profile maximum are split; every batch from 1 up runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elunet.card import CARD_FILE, ModelCard
from elunet.dtypes import BY_NUMPY
from elunet.errors import ElunetError
from elunet.model_config import DEFAULT_MAX_BATCH_SIZE, TensorSignature
from elunet.runtime.engine import Engine, Instance, one_input_and_output

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")


def engine_uses_elu_plugin(plan_path: Path) -> bool | None:
    """Whether the serialized engine at ``plan_path`` holds EluPlugin layers, from the card beside it; None: no card."""
    card_file = Path(plan_path).with_name(CARD_FILE)
    if not card_file.is_file():
        return None
    card = ModelCard.load(card_file)
    return card.export is not None and card.export.elu_mode == "plugin"


class TensorRTInstance(Instance):
    def __init__(self, engine: "TensorRTEngine", index: int):
        super().__init__(engine, index)
        from elunet.plugins.tensorrt_import import check_cuda

        self._check = check_cuda
        self._cudart = cudart = engine.cudart
        self._stream = self._d_in = self._d_out = None
        try:
            self._context = engine.trt_engine.create_execution_context()
            if self._context is None:
                raise ElunetError("TensorRT could not create an execution context (out of device memory?)",
                                  hint="serve fewer instances (instance_group count) or a smaller max batch")
            self._stream = check_cuda(cudart.cudaStreamCreate())
            n = engine.max_batch_size
            self._d_in = check_cuda(cudart.cudaMalloc(n * int(np.prod(engine.input.dims)) * engine.in_dtype.itemsize))
            self._d_out = check_cuda(cudart.cudaMalloc(n * int(np.prod(engine.output.dims)) * engine.out_dtype.itemsize))
            self._context.set_tensor_address(engine.input.name, int(self._d_in))
            self._context.set_tensor_address(engine.output.name, int(self._d_out))
        except BaseException:
            self.close()  # a half-made instance frees what it allocated
            raise

    def _infer(self, pixels: np.ndarray) -> np.ndarray:
        engine = self.engine
        pixels = np.asarray(pixels)
        if tuple(pixels.shape[1:]) != engine.input.dims:
            raise ElunetError(f"expected pixels [n, {', '.join(map(str, engine.input.dims))}], got {list(pixels.shape)}")
        step = engine.max_batch_size
        chunks = [self._infer_chunk(pixels[i:i + step]) for i in range(0, len(pixels), step)]
        return np.concatenate(chunks) if chunks else np.zeros((0, *engine.output.dims), np.float32)

    def _infer_chunk(self, pixels: np.ndarray) -> np.ndarray:
        cudart, check, engine = self._cudart, self._check, self.engine
        host_in = np.ascontiguousarray(pixels, dtype=engine.in_dtype)
        host_out = np.empty((len(pixels), *engine.output.dims), dtype=engine.out_dtype)
        if not self._context.set_input_shape(engine.input.name, host_in.shape):
            raise ElunetError(f"the engine rejected input shape {host_in.shape}")
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(cudart.cudaMemcpyAsync(self._d_in, host_in.ctypes.data, host_in.nbytes, h2d, self._stream))
        if not self._context.execute_async_v3(int(self._stream)):
            raise ElunetError("TensorRT failed to run the engine (see its log above)")
        check(cudart.cudaMemcpyAsync(host_out.ctypes.data, self._d_out, host_out.nbytes, d2h, self._stream))
        check(cudart.cudaStreamSynchronize(self._stream))
        return host_out.astype(np.float32, copy=False)

    def close(self) -> None:
        for attr in ("_d_in", "_d_out"):
            if getattr(self, attr, None) is not None:
                self._check(self._cudart.cudaFree(getattr(self, attr)))
                setattr(self, attr, None)
        if getattr(self, "_stream", None) is not None:
            self._check(self._cudart.cudaStreamDestroy(self._stream))
            self._stream = None
        self._context = None


class TensorRTEngine(Engine):
    kind = "tensorrt"
    platform = "tensorrt_plan"

    def __init__(self, model_path: Path, device: str = "cuda:0", *, max_batch_size: int | None = None, plugin_lib: Path | None = None):
        """``max_batch_size``: the largest batch wanted (an ONNX file is built for it); None: the engine profile's maximum."""
        from elunet.plugins.engine_builder import EngineOptions, build_engine
        from elunet.plugins.library import load_plugin_library
        from elunet.plugins.tensorrt_import import import_cudart, import_tensorrt, tensorrt_logger

        if device not in ("auto", "cuda", "cuda:0"):
            raise ElunetError(f"the TensorRT engine runs on the first visible GPU, got device {device}",
                              hint="select the GPU with CUDA_VISIBLE_DEVICES=N and use cuda")
        trt = import_tensorrt()
        self.cudart = import_cudart()
        model_path = Path(model_path)
        if model_path.suffix == ".onnx":
            max_batch_size = max_batch_size or DEFAULT_MAX_BATCH_SIZE
            options = EngineOptions(min_batch=1, opt_batch=max(1, max_batch_size // 2), max_batch=max_batch_size,
                                    plugin_libs=(plugin_lib,) if plugin_lib else ())
            plan = build_engine(model_path, options).plan
        elif model_path.suffix in ENGINE_SUFFIXES:
            uses_plugin = engine_uses_elu_plugin(model_path)
            if uses_plugin:
                load_plugin_library(plugin_lib)
            plan = model_path.read_bytes()
        else:
            raise ElunetError(f"{model_path} is neither an ONNX model nor a TensorRT engine",
                              hint=f"pass a .onnx or one of {', '.join(ENGINE_SUFFIXES)}")
        self._runtime = trt.Runtime(tensorrt_logger())
        self.trt_engine = self._runtime.deserialize_cuda_engine(plan)
        if self.trt_engine is None:
            hint = ("engines only run on the TensorRT version and GPU type that built them; rebuild with "
                    "`elunet build-engine`")
            if model_path.suffix in ENGINE_SUFFIXES and uses_plugin is None:
                hint += (f"; no {CARD_FILE} beside it says whether it holds EluPlugin layers, so no plugin was loaded: "
                         "keep the card build-engine published with it, or register the plugin first "
                         "(elunet.plugins.library.load_plugin_library)")
            raise ElunetError(f"TensorRT could not deserialize {model_path} (see its log above)", hint=hint)
        engine = self.trt_engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        input_name, output_name = one_input_and_output(
            model_path, [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT],
            [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT])
        _, _, profile_max = engine.get_tensor_profile_shape(input_name, 0)
        # The profile's maximum is the engine's own limit; instances allocate buffers for it.
        self.max_batch_size = min(int(max_batch_size or profile_max[0]), int(profile_max[0]))
        self.in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(input_name)))
        self.out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(output_name)))
        in_dims = tuple(int(d) for d in engine.get_tensor_shape(input_name))[1:]
        out_dims = tuple(int(d) for d in engine.get_tensor_shape(output_name))[1:]
        self.input = TensorSignature(input_name, BY_NUMPY[self.in_dtype.name].v2, in_dims)
        self.output = TensorSignature(output_name, BY_NUMPY[self.out_dtype.name].v2, out_dims)
        self.device = "cuda:0"
        self.name = f"tensorrt {trt.__version__} {self.in_dtype.name}->{self.out_dtype.name} (batch 1..{self.max_batch_size})"
        self._count = 0

    def create_instance(self) -> TensorRTInstance:
        self._count += 1
        return TensorRTInstance(self, self._count - 1)

    def close(self) -> None:
        self.trt_engine = self._runtime = None
