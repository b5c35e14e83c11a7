"""Is a model file covered by a passed parity certificate for what is about to run it? Asked by export before publishing and by the server before serving.

A certificate (written by `elunet verify`, see export/verify.py) lies beside
the model it certifies and binds, so that it never vouches for something it
did not see:

- the model file's bytes (sha256) and the checkpoint weights it was compared with;
- where it was earned (``RunsOn``: the backend and the device kind): numerics
  differ between CPU and CUDA kernels, so a CPU certificate says nothing of CUDA;
- the tolerances it was judged by: one earned with tolerances looser than the
  defaults (`elunet verify --loosened`) is a measurement, never a pass;
- what the server takes from card.json (labels, preprocessing) and the bytes
  of the labels.txt it answers with.

Certificate files: ``parity.json`` (``side_file``) is the one export and
publishing write; `elunet verify` writes one per target,
``parity.<backend>-<device>.json``, so verifying on another device never
replaces it. Reading them needs no PyTorch and no ONNX.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from elunet.card import CARD_FILE, ModelCard
from elunet.errors import ElunetError
from elunet.files import sha256_file
from elunet.model_config import labels_text
from elunet.repository import PARITY_FILE, side_file


@dataclass(frozen=True)
class RunsOn:
    """Where a model runs, as far as its numerics go: the backend and the device kind (cpu, cuda)."""

    backend: str
    device: str

    @classmethod
    def of(cls, backend: str, device: str) -> "RunsOn":
        """From an engine's device (cpu, cuda, cuda:N): which GPU it is does not change the kernels."""
        return cls(backend, device.split(":")[0])

    def __str__(self) -> str:
        return f"{self.backend} on {self.device}"


def target_certificate(model_file: Path, runs_on: RunsOn) -> Path:
    """The certificate `elunet verify` writes for ``runs_on``, beside the one export wrote."""
    stem, suffix = PARITY_FILE.rsplit(".", 1)
    return side_file(model_file, f"{stem}.{runs_on.backend}-{runs_on.device}.{suffix}")


def serving_digests(card: ModelCard) -> dict[str, str]:
    """The sha256s binding what the server takes from the card and the labels.txt it serves with.

    Of the card only labels and preprocessing: its name, version and metrics change when a
    verified model is published under another name, and do not change an answer.
    """
    served = json.dumps({"labels": card.labels, "preprocessing": card.preprocessing.model_dump(mode="json")}, sort_keys=True)
    return {
        "card_sha256": hashlib.sha256(served.encode()).hexdigest(),
        "labels_txt_sha256": hashlib.sha256(labels_text(card).encode()).hexdigest(),
    }


def certificate_problem(
    model_file: Path, runs_on: RunsOn | None, *, weights_file: Path | None = None, labels_file: Path | None = None
) -> str | None:
    """Why ``model_file`` has no valid passed certificate for ``runs_on``; None when it has one.

    ``runs_on`` None: any backend and device (publishing, or a checkpoint served in torch, which
    is the reference itself). ``weights_file``: the certificate must name exactly those weights.
    ``labels_file``: the labels.txt that will be served, if there is one.
    """
    model_file = Path(model_file)
    candidates = [side_file(model_file, PARITY_FILE)] + ([target_certificate(model_file, runs_on)] if runs_on else [])
    present = [p for p in candidates if p.is_file()]
    if not present:
        return f"no parity certificate ({' or '.join(p.name for p in candidates)}) beside {model_file.name}"
    problems = [_problem(p, model_file, runs_on, weights_file, labels_file) for p in present]
    return None if None in problems else "; ".join(problems)


def _problem(report: Path, model_file: Path, runs_on: RunsOn | None, weights_file: Path | None, labels_file: Path | None) -> str | None:
    try:
        data = json.loads(report.read_text())
        passed, sha256, weights = bool(data["passed"]), data["model"]["sha256"], data["checkpoint"]["weights_sha256"]
        earned_on, loosened, digests = RunsOn(**data["runs_on"]), bool(data["tolerance"]["loosened"]), data["serves_with"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{report.name} is unreadable or from an older elunet ({type(exc).__name__}: {exc}); run `elunet verify` again"
    if not passed:
        return f"{report.name} says parity FAILED"
    if loosened:
        return f"{report.name} was earned with tolerances looser than the defaults (--loosened): a measurement, not a pass"
    if runs_on is not None and earned_on != runs_on:
        return f"{report.name} was earned with {earned_on}, but this runs {model_file.name} with {runs_on}"
    if sha256 != sha256_file(model_file):
        return f"{model_file.name} changed after it was verified (its sha256 differs from the one in {report.name})"
    card_file = side_file(model_file, CARD_FILE)
    try:
        card = ModelCard.load(card_file)
    except ElunetError as exc:
        return f"{card_file.name} beside {model_file.name} is missing or invalid: {exc.message}"
    if serving_digests(card)["card_sha256"] != digests["card_sha256"]:
        return f"{card_file.name}'s labels or preprocessing changed after {report.name} was written"
    if labels_file is not None and Path(labels_file).is_file() and sha256_file(labels_file) != digests["labels_txt_sha256"]:
        return f"{Path(labels_file).name} is not the labels {model_file.name} was verified with"
    if weights_file is not None and (not Path(weights_file).is_file() or weights != sha256_file(weights_file)):
        return f"{Path(weights_file).name} is not the checkpoint {report.name} was verified against"
    return None
