"""The model repository: Triton Inference Server's folder layout, read and written by elunet.

    ROOT/<name>/config.pbtxt          Triton model configuration
    ROOT/<name>/labels.txt            one class label per line (Triton's label_filename)
    ROOT/<name>/<version>/model.onnx  or model.plan for a TensorRT engine
    ROOT/<name>/<version>/card.json   the model card, with its export section
    ROOT/<name>/<version>/parity.json the parity certificate from `elunet verify`

With ``elunet export --image-model``, ``ROOT/<name>-image/`` (image_model_name) is
the same model taking encoded image files: config.pbtxt with one TYPE_STRING
input, and each version folder holding the same model file, card.json (under the
image model's name) and parity.json.

Export writes a version folder under a temporary name and renames it into
place, so a reader never sees half a version. Folders whose names are not
plain integers (such as those temporary ones) are not versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from elunet.card import CARD_FILE, ModelCard
from elunet.contracts import MODEL_NAME_RE, MODEL_NAME_RULE
from elunet.errors import ElunetError

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
PARITY_FILE = "parity.json"
MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
# Appended to a model's name to name its image model: the one rule, here.
IMAGE_MODEL_SUFFIX = "-image"


def side_file(model_file: Path, name: str) -> Path:
    """A file that belongs to one model file (``CARD_FILE``, ``PARITY_FILE``, ...), beside it.

    Beside a repository's model.onnx or model.plan it has its plain name (Triton's layout); beside
    any other X.onnx it is X.<name>, so that two models written into one folder never share one.
    """
    model_file = Path(model_file)
    return model_file.with_name(name if model_file.name in MODEL_FILES.values() else f"{model_file.stem}.{name}")


# A version is a folder name and a URL segment: ASCII digits only (str.isdigit also takes "²"), 18 at most (int64).
_VERSION_RE = re.compile(r"[0-9]{1,18}")


def parse_version(text: str) -> int | None:
    """``text`` as a version number, or None when it is not one."""
    return int(text) if _VERSION_RE.fullmatch(text) else None


def check_model_name(name: str) -> str:
    if not MODEL_NAME_RE.match(name):
        raise ElunetError(
            f"invalid model name {name!r}",
            hint=f"use {MODEL_NAME_RULE}",
        )
    return name


def image_model_name(name: str) -> str:
    """The name of the image model served beside model ``name``; ElunetError when that is no valid name (too long)."""
    image_name = name + IMAGE_MODEL_SUFFIX
    if not MODEL_NAME_RE.match(image_name):
        raise ElunetError(f"model {name!r} cannot have an image model: {image_name!r} is not a valid model name",
                          hint=f"model names are {MODEL_NAME_RULE}; export under a shorter --name")
    return image_name


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path

    @property
    def card(self) -> ModelCard:
        return ModelCard.load(self.path / CARD_FILE)

    def model_file(self, platform: str = "onnxruntime_onnx") -> Path:
        return self.path / MODEL_FILES[platform]


class ModelRepository:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def model_dir(self, name: str) -> Path:
        return self.root / check_model_name(name)

    def version_dir(self, name: str, version: int) -> Path:
        return self.model_dir(name) / str(int(version))

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and MODEL_NAME_RE.match(p.name) and self.versions(p.name))

    def versions(self, name: str) -> list[ModelVersion]:
        d = self.model_dir(name)
        if not d.is_dir():
            return []
        found = [ModelVersion(name, parse_version(p.name), p) for p in d.iterdir() if p.is_dir() and parse_version(p.name) is not None]
        return sorted(found, key=lambda v: v.version)

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        versions = self.versions(name)
        if not versions:
            raise ElunetError(f"model {name!r} not found in repository {self.root}", hint=f"models there: {', '.join(self.models()) or 'none'}")
        if version is None:
            return versions[-1]
        for v in versions:
            if v.version == version:
                return v
        raise ElunetError(
            f"model {name!r} has no version {version} in {self.root}",
            hint=f"versions there: {', '.join(str(v.version) for v in versions)}",
        )
