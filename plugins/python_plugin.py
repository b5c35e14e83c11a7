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

An engine built with it serializes the contract's fields (alpha: one
float32), so another process deserializes it with either this call or the
compiled library, which is what the TensorRT runtime loads for a plugin
engine.
"""

from __future__ import annotations

import inspect
from typing import Tuple

import numpy as np
import numpy.typing as npt

from elunet.contracts import elu_plugin_contract
from elunet.errors import ElunetError
from elunet.plugins.library import elu_creator_registered
from elunet.plugins.tensorrt_import import import_tensorrt

# tensorrt.plugin registers every plugin as version "1".
PYTHON_PLUGIN_VERSION = "1"

# How tensorrt.plugin is told each contract field type. It serializes an attribute as the numpy type
# of its value, so a plain `float` goes out as FLOAT64, which the compiled creator (and the contract)
# refuse; a float32 array of one element goes out as one FLOAT32, and the ONNX parser's FLOAT32 field
# comes in as that array.
ATTRIBUTE_TYPES = {"float32": npt.NDArray[np.float32]}


def alpha_field() -> str:
    """The contract's one field (the ELU alpha), checked to be a type tensorrt.plugin can declare."""
    fields = elu_plugin_contract().fields
    if len(fields) != 1 or next(iter(fields.values())) not in ATTRIBUTE_TYPES:
        raise ElunetError(
            f"the ELU plugin contract has fields {fields}; the Python plugin implements one field of type "
            f"{' or '.join(ATTRIBUTE_TYPES)} (the ELU alpha)",
            hint="elunet/elu_plugin.json, plugins/python_plugin.py and plugins/elu must change together",
        )
    return next(iter(fields))


def _arguments(func, args, kwargs) -> dict:
    """``func``'s arguments by name, bound against the signature tensorrt.plugin was shown: the attributes
    arrive by keyword (and inputs, outputs and stream as tensorrt.plugin places them), so the functions
    take them as they come instead of naming a contract field in Python code."""
    return func.__signature__.bind(*args, **kwargs).arguments


def _alpha(arguments: dict) -> float:
    return float(np.asarray(arguments[alpha_field()], dtype=np.float32).reshape(()))


def _elu_desc(*args, **kwargs):
    """Output: same shape and type as the input."""
    return _arguments(_elu_desc, args, kwargs)["x"].like()


def _elu_autotune(*args, **kwargs):
    import tensorrt.plugin as trtp

    return [trtp.AutoTuneCombination("FP32|FP16|BF16, FP32|FP16|BF16", "LINEAR")]


def _elu_impl(*args, **kwargs):
    import torch

    arguments = _arguments(_elu_impl, args, kwargs)
    with torch.cuda.stream(torch.cuda.ExternalStream(arguments["stream"])):
        source = torch.as_tensor(arguments["x"], device="cuda")
        target = torch.as_tensor(arguments["outputs"][0], device="cuda")
        target.copy_(torch.nn.functional.elu(source, alpha=_alpha(arguments)))


def _with_signature(func, params, returns=inspect.Signature.empty):
    """tensorrt.plugin reads attribute names and types from the signature; the contract decides them."""
    func.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation)
         for name, annotation in params],
        return_annotation=returns,
    )
    return func


def declare_signatures(trtp) -> None:
    """Give the three functions the signatures tensorrt.plugin (module ``trtp``) reads: tensors, then the contract's field."""
    field = alpha_field()
    attribute = (field, ATTRIBUTE_TYPES[elu_plugin_contract().fields[field]])
    _with_signature(_elu_desc, [("x", trtp.TensorDesc), attribute], returns=trtp.TensorDesc)
    _with_signature(_elu_autotune, [("x", trtp.TensorDesc), ("outputs", Tuple[trtp.TensorDesc])])
    _with_signature(_elu_impl, [("x", trtp.Tensor), attribute, ("outputs", Tuple[trtp.Tensor]), ("stream", int)])


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
    declare_signatures(trtp)
    trtp.register(plugin_id)(_elu_desc)
    trtp.autotune(plugin_id)(_elu_autotune)
    trtp.impl(plugin_id)(_elu_impl)
    return plugin_id
