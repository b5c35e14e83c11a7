"""What a served model version takes and answers: the one description every transport reads.

``ModelInterface``: the model's one input (name, datatype, dims without the batch axis), its one
output, the labels of the output's classes, and, when the input takes images, how /v1 classify
turns image files into it. The names and dims are the model file's (the engine reads them), so
V2 infer, gRPC, classify, warm-up and metadata all speak of the tensors the model really has.

Two sources describe a model, each checked against its model file by the loader
(serve/loader.py): an elunet export's card.json (and labels.txt), and a plain Triton model's
config.pbtxt (its input's ``format`` and its output's ``label_filename``, as Triton reads them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from elunet.card import ModelCard
from elunet.contracts import INPUT_RANGE
from elunet.model_config import TensorSignature

# Triton's input formats that make an image input, and where each keeps the channels among the dims.
IMAGE_FORMATS = {"FORMAT_NCHW": 0, "FORMAT_NHWC": 2}
# The channel counts an image file is converted to, and the Pillow mode of each.
COLOR_MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class ImageInput:
    """An input that takes a batch of images as pixels in [0, 1] (``INPUT_RANGE``), in ``layout``."""

    channels: int
    height: int
    width: int
    color_mode: Literal["L", "RGB"]
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    def arranged(self, pixels: np.ndarray) -> np.ndarray:
        """Decoded images [n, C, H, W] in the layout the input takes."""
        return pixels if self.layout == "NCHW" else np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))

    def describe(self) -> str:
        low, high = INPUT_RANGE
        return f"{self.layout} {self.color_mode} {self.height}x{self.width}, pixels in [{low:g}, {high:g}]"


@dataclass(frozen=True)
class ModelInterface:
    input: TensorSignature
    output: TensorSignature
    labels: tuple[str, ...]  # one per class (element of the output), or none
    image: ImageInput | None  # None: the input is no image, and /v1 classify refuses the model
    # An image model's (elunet.model_config.IMAGE_INPUT): requests carry encoded image files, which the server decodes
    # as ``image`` says into ``input``; None: requests carry ``input`` itself.
    image_files: TensorSignature | None = None

    @property
    def request_input(self) -> TensorSignature:
        """The input requests carry (metadata describes it)."""
        return self.image_files or self.input

    @property
    def classes(self) -> int:
        """Scores per image: the elements of the output (Triton's classification ranks them all)."""
        return math.prod(self.output.dims)


def card_interface(card: ModelCard, labels: list[str], engine_input: TensorSignature, engine_output: TensorSignature,
                   image_files: TensorSignature | None = None) -> ModelInterface:
    """An elunet export: the model file's tensors (their dims checked against the card), the card's preprocessing; ``image_files``
    for an image model."""
    p = card.preprocessing
    return ModelInterface(engine_input, engine_output, tuple(labels), ImageInput(p.channels, p.height, p.width, p.color_mode, p.layout),
                          image_files)


def config_image_input(format_name: str, dims: tuple[int, ...]) -> ImageInput | None:
    """The image input a config.pbtxt input declares: ``format`` FORMAT_NCHW or FORMAT_NHWC with 1 or 3 channels; None otherwise."""
    channel_axis = IMAGE_FORMATS.get(format_name)
    if channel_axis is None or len(dims) != 3 or dims[channel_axis] not in COLOR_MODES:
        return None
    height, width = (d for i, d in enumerate(dims) if i != channel_axis)
    channels = dims[channel_axis]
    return ImageInput(channels, height, width, COLOR_MODES[channels], format_name.removeprefix("FORMAT_"))
