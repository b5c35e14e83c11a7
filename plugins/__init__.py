"""elunet.plugins: the ELU TensorRT plugin and TensorRT engines (see README.md, section "TensorRT").

- ``plugins/elu/``: the CUDA kernel, the IPluginV3 plugin and its CMake build;
- ``library``: finding and loading the compiled plugin library into TensorRT;
- ``python_plugin``: the same plugin through ``tensorrt.plugin``, no compiler needed;
- ``engine_builder``: `elunet build-engine` (ONNX -> model.plan in the model repository);
- ``tensorrt_runner``: running an engine with cuda-python, no PyTorch.

TensorRT and cuda-python are imported only when used.
"""
