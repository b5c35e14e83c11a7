"""Running a TensorRT engine without PyTorch: cuda-python for memory and streams.

``TensorRTRunner`` is the runner `elunet verify --backend tensorrt` and the
serving stage's TensorRT backend open (interface: elunet.export.runners.Runner):
float32 pixels [n, C, H, W] in, float32 logits [n, classes] out, whatever
types the engine computes in. Batches larger than the engine's profile
maximum are split; any batch from 1 up runs (dynamic batch axis).

``model_path`` is a serialized engine (``.plan``, ``.engine``) or an ONNX
file, which is built into an engine first (ELU plugin registered).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elunet.contracts import INPUT_NAME, OUTPUT_NAME
from elunet.errors import ElunetError
from elunet.export.runners import Runner
from elunet.plugins.tensorrt_import import check_cuda, import_cudart, import_tensorrt, tensorrt_logger

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")


class TensorRTRunner(Runner):
    def __init__(self, model_path: Path, *, max_batch_size: int, plugin_lib: Path | None = None):
        from elunet.plugins.engine_builder import EngineOptions, build_engine
        from elunet.plugins.library import load_plugin_library

        trt = import_tensorrt()
        self._cudart = cudart = import_cudart()
        model_path = Path(model_path)
        if model_path.suffix == ".onnx":
            options = EngineOptions(min_batch=1, opt_batch=max(1, max_batch_size // 2), max_batch=max_batch_size,
                                    plugin_libs=(plugin_lib,) if plugin_lib else ())
            plan = build_engine(model_path, options).plan
        elif model_path.suffix in ENGINE_SUFFIXES:
            # The engine may hold EluPlugin layers; their creator must be registered to deserialize.
            load_plugin_library(plugin_lib)
            plan = model_path.read_bytes()
        else:
            raise ElunetError(f"{model_path} is neither an ONNX model nor a TensorRT engine",
                              hint=f"pass a .onnx or one of {', '.join(ENGINE_SUFFIXES)}")

        self._runtime = trt.Runtime(tensorrt_logger())
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise ElunetError(f"TensorRT could not deserialize {model_path} (see its log above)",
                              hint="engines only run on the TensorRT version and GPU type that built them; rebuild "
                              "with `elunet build-engine`")
        self._context = self._engine.create_execution_context()
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        if names != {INPUT_NAME, OUTPUT_NAME}:
            raise ElunetError(f"{model_path} has I/O tensors {sorted(names)}, expected {INPUT_NAME!r} and {OUTPUT_NAME!r}")

        _, _, profile_max = self._engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.max_batch_size = min(int(max_batch_size), int(profile_max[0]))
        self._in_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(INPUT_NAME)))
        self._out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(OUTPUT_NAME)))
        self._sample_shape = tuple(int(d) for d in self._engine.get_tensor_shape(INPUT_NAME))[1:]
        self._context.set_input_shape(INPUT_NAME, (self.max_batch_size, *self._sample_shape))
        out_shape = tuple(int(d) for d in self._context.get_tensor_shape(OUTPUT_NAME))
        self._classes = out_shape[1]

        self._stream = check_cuda(cudart.cudaStreamCreate())
        in_bytes = self.max_batch_size * int(np.prod(self._sample_shape)) * self._in_dtype.itemsize
        out_bytes = self.max_batch_size * self._classes * self._out_dtype.itemsize
        self._d_in = check_cuda(cudart.cudaMalloc(in_bytes))
        self._d_out = check_cuda(cudart.cudaMalloc(out_bytes))
        self._context.set_tensor_address(INPUT_NAME, int(self._d_in))
        self._context.set_tensor_address(OUTPUT_NAME, int(self._d_out))
        self.name = (f"tensorrt {trt.__version__} {self._in_dtype.name}->{self._out_dtype.name} "
                     f"(batch 1..{self.max_batch_size})")

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != self._sample_shape:
            raise ElunetError(f"expected pixels [n, {', '.join(map(str, self._sample_shape))}], got {list(pixels.shape)}")
        chunks = [self._infer_chunk(pixels[i:i + self.max_batch_size])
                  for i in range(0, len(pixels), self.max_batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self._classes), np.float32)

    def _infer_chunk(self, pixels: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        host_in = np.ascontiguousarray(pixels, dtype=self._in_dtype)
        host_out = np.empty((len(pixels), self._classes), dtype=self._out_dtype)
        if not self._context.set_input_shape(INPUT_NAME, host_in.shape):
            raise ElunetError(f"the engine rejected input shape {host_in.shape}")
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check_cuda(cudart.cudaMemcpyAsync(self._d_in, host_in.ctypes.data, host_in.nbytes, h2d, self._stream))
        if not self._context.execute_async_v3(int(self._stream)):
            raise ElunetError("TensorRT failed to run the engine (see its log above)")
        check_cuda(cudart.cudaMemcpyAsync(host_out.ctypes.data, self._d_out, host_out.nbytes, d2h, self._stream))
        check_cuda(cudart.cudaStreamSynchronize(self._stream))
        return host_out.astype(np.float32, copy=False)

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        for attr in ("_d_in", "_d_out"):
            if getattr(self, attr, None) is not None:
                check_cuda(cudart.cudaFree(getattr(self, attr)))
                setattr(self, attr, None)
        if getattr(self, "_stream", None) is not None:
            check_cuda(cudart.cudaStreamDestroy(self._stream))
            self._stream = None
        self._context = self._engine = None
