"""Contracts that more than one stage must agree on, each defined once.

- The graph interface every exported model has: one input ``input``
  [batch, C, H, W] of pixels in [0, 1] and one output ``logits`` [batch, classes];
  its image model's input ``image`` takes an encoded image file per batch element.
- The ELU TensorRT plugin contract (``elu_plugin.json`` beside this file): the
  exporter writes it into ONNX nodes and ``plugins/elu`` compiles it into the
  TensorRT plugin creator, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# A checkpoint folder and a model-repository version folder both hold the
# weights under this name beside card.json, so either can be loaded as a model.
WEIGHTS_FILE = "model.safetensors"

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# The one input of a model's image model (elunet.repository.image_model_name): encoded image files, one per batch element.
IMAGE_INPUT_NAME = "image"
INPUT_LAYOUT = "NCHW"
INPUT_RANGE = (0.0, 1.0)

# Model names become folder names in the model repository and URL segments in
# the server: no separators, no dot-dot, no hidden files.
MODEL_NAME_RE = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MODEL_NAME_RULE = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit, no '..'"

ELU_PLUGIN_CONTRACT_FILE = Path(__file__).with_name("elu_plugin.json")


@dataclass(frozen=True)
class EluPluginContract:
    op_type: str
    onnx_domain: str
    plugin_name: str
    plugin_version: str
    plugin_namespace: str
    fields: dict[str, str]


@lru_cache(maxsize=1)
def elu_plugin_contract() -> EluPluginContract:
    raw = json.loads(ELU_PLUGIN_CONTRACT_FILE.read_text())
    raw.pop("_comment", None)
    contract = EluPluginContract(**raw)
    if "." in contract.plugin_namespace:
        # TensorRT's ONNX parser reads "plugin_namespace" verbatim; dots are not allowed there.
        raise ValueError(f"plugin_namespace must not contain dots: {contract.plugin_namespace!r}")
    return contract
