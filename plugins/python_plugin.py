"""The ELU plugin through TensorRT's Python plugin API (``tensorrt.plugin``, TensorRT 10.6+).

For users without a C++/CUDA toolchain: the same plugin name, version,
namespace and field as the compiled library (all from the one contract), so
the ONNX parser picks it up for the exporter's EluPlugin nodes. Its
implementation runs PyTorch's ELU (the same formula and special values as
the CUDA kernel) on TensorRT's stream; the compiled library is the faster
choice where it can be built.

Register it once per process, before parsing or deserializing::

    from elunet.plugins.python_plugin import register_python_plugin
    register_python_plugin()

Engines built with it need it registered again (same call) to deserialize.
"""

from __future__ import annotations

import inspect
from typing import Tuple

from elunet.contracts import elu_plugin_contract
from elunet.errors import ElunetError
from elunet.plugins.library import elu_creator_registered
from elunet.plugins.tensorrt_import import import_tensorrt

# tensorrt.plugin registers every plugin as version "1".
PYTHON_PLUGIN_VERSION = "1"


def _elu_desc(x):
    """Output: same shape and type as the input (the alpha parameter is bound by the signature)."""
    return x.like()


def _elu_autotune(x, outputs):
    import tensorrt.plugin as trtp

    return [trtp.AutoTuneCombination("FP32|FP16|BF16, FP32|FP16|BF16", "LINEAR")]


def _elu_impl(x, alpha, outputs, stream):
    import torch

    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        source = torch.as_tensor(x, device="cuda")
        target = torch.as_tensor(outputs[0], device="cuda")
        target.copy_(torch.nn.functional.elu(source, alpha=float(alpha)))


def _with_signature(func, params, returns=inspect.Signature.empty):
    """tensorrt.plugin reads attribute names from the signature; the contract decides the name."""
    func.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation)
         for name, annotation in params],
        return_annotation=returns,
    )
    return func


def register_python_plugin() -> str:
    """Register the ELU plugin's Python implementation; returns its ``namespace::name`` id."""
    trt = import_tensorrt()
    contract = elu_plugin_contract()
    plugin_id = f"{contract.plugin_namespace}::{contract.plugin_name}"
    if contract.plugin_version != PYTHON_PLUGIN_VERSION:
        raise ElunetError(
            f"the ELU plugin contract asks for version {contract.plugin_version}, but tensorrt.plugin registers "
            f"version {PYTHON_PLUGIN_VERSION} only",
            hint="use the compiled plugin library (elunet.plugins.library.load_plugin_library)",
        )
    if elu_creator_registered(trt):
        return plugin_id
    try:
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise ElunetError(
            f"TensorRT {trt.__version__} has no tensorrt.plugin module ({exc})",
            hint="the Python plugin API needs TensorRT 10.6 or newer; or use the compiled plugin library",
        ) from None
    ((alpha_field, _),) = contract.fields.items()
    trtp.register(plugin_id)(
        _with_signature(_elu_desc, [("x", trtp.TensorDesc), (alpha_field, float)], returns=trtp.TensorDesc)
    )
    trtp.autotune(plugin_id)(
        _with_signature(_elu_autotune, [("x", trtp.TensorDesc), ("outputs", Tuple[trtp.TensorDesc])])
    )
    trtp.impl(plugin_id)(
        _with_signature(_elu_impl, [("x", trtp.Tensor), (alpha_field, float),
                                    ("outputs", Tuple[trtp.Tensor]), ("stream", int)])
    )
    return plugin_id
