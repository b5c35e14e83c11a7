"""elunet.plugins: the ELU TensorRT plugin and TensorRT engines (see README.md, section "TensorRT").

- ``plugins/elu/``: the CUDA kernel, the IPluginV3 plugin and its CMake build;
- ``library``: finding and loading the compiled plugin library into TensorRT;
- ``python_plugin``: the same plugin through ``tensorrt.plugin``, no compiler needed;
- ``engine_builder``: `elunet build-engine` (ONNX -> model.plan in the model repository);
- running an engine is elunet.runtime's (``tensorrt_engine``), shared with ONNX Runtime and torch.

TensorRT and cuda-python are imported only when used.
"""
