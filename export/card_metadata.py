"""The model card inside the ONNX file, so the file describes itself.

The card travels as JSON under ``elunet.card.ONNX_METADATA_KEY`` in the
model's ``metadata_props`` (what Netron, ONNX Runtime's ``modelmeta`` and
Triton show), and beside the file as ``card.json``.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from elunet.card import ONNX_METADATA_KEY, ModelCard
from elunet.errors import ElunetError


def embed_card(proto: onnx.ModelProto, card: ModelCard) -> None:
    """Set (or replace) the card in the model's metadata_props."""
    kept = [p for p in proto.metadata_props if p.key != ONNX_METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=ONNX_METADATA_KEY, value=card.to_json())


def card_in(proto: onnx.ModelProto, source: str = "ONNX model") -> ModelCard:
    for prop in proto.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            return ModelCard.from_json(prop.value, source=f"{source} metadata {ONNX_METADATA_KEY!r}")
    raise ElunetError(
        f"{source} carries no elunet model card (metadata_props key {ONNX_METADATA_KEY!r})",
        hint="verify models written by `elunet export`",
    )


def read_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX file with a clear error for a missing or corrupt one."""
    path = Path(path)
    if not path.is_file():
        raise ElunetError(f"no ONNX model at {path}", hint="pass the model.onnx written by `elunet export`")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning-wrapped errors for corrupt files
        raise ElunetError(f"{path} is not a readable ONNX model: {exc}", hint="re-export it with `elunet export`") from None


def card_from_onnx(path: Path) -> ModelCard:
    return card_in(read_onnx(path), source=str(path))
