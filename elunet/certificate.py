"""Is a model file covered by a passed parity certificate? Asked by export before publishing and by the server before serving.

``parity.json`` (written by `elunet verify`, see export/verify.py) lies beside
the model it certifies and names that file's sha256, so a certificate never
vouches for a file that changed after it was verified. Reading it needs no
PyTorch and no ONNX.
"""

from __future__ import annotations

import json
from pathlib import Path

from elunet.files import sha256_file
from elunet.repository import PARITY_FILE


def certificate_problem(model_file: Path, weights_file: Path | None = None) -> str | None:
    """Why ``model_file`` has no valid passed certificate beside it; None when it has one.

    With ``weights_file`` (a checkpoint served in torch), the certificate must also name
    exactly those weights as the checkpoint it was verified against.
    """
    model_file = Path(model_file)
    report = model_file.with_name(PARITY_FILE)
    if not report.is_file():
        return f"no parity certificate ({PARITY_FILE}) beside {model_file.name}"
    try:
        data = json.loads(report.read_text())
        passed, sha256, weights = bool(data["passed"]), data["model"]["sha256"], data["checkpoint"]["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{PARITY_FILE} is unreadable ({type(exc).__name__}: {exc})"
    if not passed:
        return f"{PARITY_FILE} says parity FAILED"
    if sha256 != sha256_file(model_file):
        return f"{model_file.name} changed after it was verified (its sha256 differs from the one in {PARITY_FILE})"
    if weights_file is not None and (not Path(weights_file).is_file() or weights != sha256_file(weights_file)):
        return f"{Path(weights_file).name} is not the checkpoint {PARITY_FILE} was verified against"
    return None
