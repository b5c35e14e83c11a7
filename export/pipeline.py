"""`elunet export`: checkpoint -> checked, verified ONNX file or repository version.

Steps, all before anything is visible at the destination:

1. load the checkpoint (a missing or corrupt file, a card/weights mismatch or
   an unknown architecture stops here, with the loader's message);
2. trace the network into ONNX (to_onnx.py, which also moves each max-pool
   before the ELU it follows); for int8 quantize it to QDQ,
   calibrated on real training images (quantize.py); in plugin mode rewrite
   every Elu into the plugin op (elu_plugin_pass.py);
3. node-level and opset checks (graph_checks.py); the card, with its export
   section, goes into the graph's metadata;
4. write the file into a staging folder; onnx.checker (full) and strict shape
   inference run on that file;
5. verify it against the checkpoint in ONNX Runtime (verify.py) unless
   --skip-verify, writing parity.json (int8: the accuracy gate on the whole
   test split);
6. only if parity passed: move it to --out, or publish the version folder
   (model.onnx, card.json, parity.json, model.safetensors) into --repository,
   and with --image-model its image model beside it (repository_writer.py).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from elunet.card import CARD_FILE, AccuracyGate, ExportInfo, ModelCard
from elunet.contracts import WEIGHTS_FILE
from elunet.errors import ElunetError
from elunet.repository import MODEL_FILES, PARITY_FILE, check_model_name, image_model_name, side_file
from elunet.export.card_metadata import embed_card
from elunet.export.elu_plugin_pass import rewrite_elu_as_plugin
from elunet.export.graph_checks import check_elu_nodes, check_onnx_file, check_opset_supports_types, check_qdq_graph, elu_alphas
from elunet.export.parity import DEFAULT_IMAGES, Tolerance, criteria
from elunet.export.quantize import CALIBRATION_SEED, CALIBRATION_SPLIT, quantization_info, quantize_qdq
from elunet.export.real_data import random_train_pixels
from elunet.export.repository_writer import image_model_card, publish_image_model, stage_version
from elunet.export.settings import IO_DTYPE, ExportSettings
from elunet.export.to_onnx import torch_to_onnx
from elunet.model_config import DEFAULT_MAX_BATCH_SIZE
from elunet.export.verify import ParityReport, verify_model

PLATFORM = "onnxruntime_onnx"
ONNX_FILE = MODEL_FILES[PLATFORM]


@dataclass
class ExportResult:
    card: ModelCard
    model_path: Path  # where the model is (or would have been, when parity failed)
    report: ParityReport | None  # None with --skip-verify

    @property
    def passed(self) -> bool:
        return self.report is None or self.report.passed


def export_checkpoint(
    checkpoint: Path,
    settings: ExportSettings,
    *,
    out: Path | None = None,
    repository: Path | None = None,
    name: str | None = None,
    version: int | None = None,
    force: bool = False,
    skip_verify: bool = False,
    images: int = DEFAULT_IMAGES,
    data_dir: Path | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    min_top1: float | None = None,
    max_accuracy_drop: float | None = None,
    image_model: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> ExportResult:
    """Export ``checkpoint`` to ``out`` (a file) or into ``repository`` (a Triton model repository).

    ``min_top1`` and ``max_accuracy_drop`` override parity.criteria's defaults for the dtype; ``image_model``
    also publishes the repository version's image model (encoded image files in).
    """
    from elunet.train.checkpoint import load_checkpoint

    settings.validate()
    judged = criteria(settings.dtype, min_top1=min_top1, max_accuracy_drop=max_accuracy_drop)
    if (out is None) == (repository is None):
        raise ElunetError("give exactly one of --out FILE and --repository DIR", hint="--out writes one ONNX file; --repository publishes a Triton model version")
    if name is not None:
        check_model_name(name)
    if image_model and repository is None:
        raise ElunetError("--image-model needs --repository", hint="an image model is a model of a Triton model repository")
    ckpt = load_checkpoint(checkpoint)  # the input first: a missing checkpoint is the error to report, whatever --out holds
    if out is not None:
        out = Path(out)
        _check_out_free(out, force)
    log(f"loaded {ckpt.card.architecture} ({ckpt.card.activation}) from {ckpt.path}")
    calibration = None
    if settings.quantized:
        calibration = random_train_pixels(ckpt.card, settings.calibration_images, CALIBRATION_SEED, data_dir, f"{settings.dtype} calibration")
        log(f"calibration: {len(calibration)} {ckpt.card.dataset} {CALIBRATION_SPLIT} images (seed {CALIBRATION_SEED}), method {settings.calibration_method}")
    build = _Build(ckpt, settings, judged, calibration, skip_verify, images, data_dir, log)

    if repository is not None:
        target_name = name or ckpt.card.name
        with contextlib.ExitStack() as stack:
            staged = stack.enter_context(stage_version(Path(repository), target_name, version, force))
            image_staged = stack.enter_context(stage_version(Path(repository), image_model_name(target_name), staged.version, force)) if image_model else None
            card = build.card(target_name, staged.version)
            staged.model_files(card, platform=PLATFORM, max_batch_size=max_batch_size, io_dtype=IO_DTYPE)  # fail fast
            if image_staged is not None:
                image_staged.model_files(image_model_card(card), platform=PLATFORM, max_batch_size=max_batch_size, io_dtype=IO_DTYPE, encoded_images=True)
            result = build.run(card, staged.path / ONNX_FILE)
            if not result.passed:
                return result
            shutil.copyfile(ckpt.path / WEIGHTS_FILE, staged.path / WEIGHTS_FILE)
            published = staged.publish(card, platform=PLATFORM, max_batch_size=max_batch_size, io_dtype=IO_DTYPE)
            log(f"published {published.name} v{published.version} in {published.path}")
            if image_staged is not None:
                image = publish_image_model(image_staged, published, platform=PLATFORM, max_batch_size=max_batch_size, io_dtype=IO_DTYPE)
                log(f"published its image model {image.name} v{image.version} in {image.path}")
            return ExportResult(card, published.path / ONNX_FILE, result.report)

    card = build.card(name or ckpt.card.name, version or ckpt.card.version)
    with _staging_beside(out) as staging:
        staged = staging / out.name  # the final name: the certificate records it
        result = build.run(card, staged)
        if not result.passed:
            return result
        for file in (PARITY_FILE, CARD_FILE):
            if side_file(staged, file).exists():
                side_file(staged, file).replace(side_file(out, file))
            else:  # --skip-verify over an earlier export: its certificate is not this model's
                side_file(out, file).unlink(missing_ok=True)
        staged.replace(out)  # the model last: its presence means the export is complete
    log(f"wrote {out}")
    return ExportResult(card, out, result.report)


@dataclass
class _Build:
    """Steps 2-5 for one checkpoint and settings, into any folder."""

    ckpt: object  # LoadedCheckpoint
    settings: ExportSettings
    judged: tuple[Tolerance, AccuracyGate | None]  # parity.criteria for the dtype
    calibration: np.ndarray | None  # int8: the calibration pixels
    skip_verify: bool
    images: int
    data_dir: Path | None
    log: Callable[[str], None]

    def card(self, name: str, version: int) -> ModelCard:
        ckpt, settings = self.ckpt, self.settings
        gate = self.judged[1]
        info = ExportInfo(
            elu_mode=settings.elu_mode,
            opset=settings.opset,
            dtype=settings.dtype,
            io_dtype=IO_DTYPE,
            exporter=f"torch.onnx ({settings.exporter}), torch {torch.__version__}",
            source_checkpoint_sha256=ckpt.sha256,
            # Written before verification: a model whose parity fails is never written out with this card.
            parity="skipped" if self.skip_verify else "passed",
            quantization=quantization_info(settings, len(self.calibration), gate) if settings.quantized else None,
        )
        return ModelCard.model_validate({**ckpt.card.model_dump(), "name": name, "version": version, "export": info.model_dump()})

    def run(self, card: ModelCard, model_path: Path) -> ExportResult:
        """``model_path``, and beside it its card and (unless skipped) its parity certificate."""
        ckpt, settings, log = self.ckpt, self.settings, self.log
        alphas = elu_alphas(ckpt.model)
        if settings.elu_mode == "plugin" and not alphas:
            raise ElunetError(
                f"--elu plugin: the {card.architecture} network has no ELU layers (activation {card.activation!r})",
                hint="the plugin replaces ELUs; export this model with --elu native",
            )
        log(f"exporting with torch.onnx ({settings.exporter}), opset {settings.opset}, {settings.dtype}, ELU {settings.elu_mode}")
        proto = torch_to_onnx(ckpt.model, card, settings)
        if settings.quantized:
            proto = quantize_qdq(proto, self.calibration, settings.calibration_method)
            log(f"quantized to {settings.dtype} QDQ with {card.export.quantization.tool}; ELUs compute in {card.export.quantization.elu}")
        if settings.elu_mode == "plugin":
            rewrite_elu_as_plugin(proto)
        check_elu_nodes(proto, alphas, settings.elu_mode)
        if settings.quantized:
            check_qdq_graph(proto)
        check_opset_supports_types(proto)
        embed_card(proto, card)
        onnx.save(proto, str(model_path))
        check_onnx_file(model_path, card)
        card.save(side_file(model_path, CARD_FILE))
        log(f"checks passed: {len(alphas)} ELU layers as {settings.elu_mode} nodes, onnx.checker (full) and shape inference")
        if self.skip_verify:
            log("parity NOT verified (--skip-verify); the card records parity: skipped")
            return ExportResult(card, model_path, None)
        tolerance, gate = self.judged
        report = verify_model(model_path, ckpt, tolerance=tolerance, accuracy_gate=gate, images=self.images, data_dir=self.data_dir, model_card=card)
        report.save(side_file(model_path, PARITY_FILE))
        for line in report.lines():
            log(line)
        return ExportResult(card, model_path, report)


def _check_out_free(out: Path, force: bool) -> None:
    if out.suffix != ".onnx":
        raise ElunetError(f"--out {out} should name an .onnx file", hint=f"e.g. --out fashion.onnx ({side_file(Path('fashion.onnx'), CARD_FILE)} and {side_file(Path('fashion.onnx'), PARITY_FILE)} are written beside it)")
    taken = [p for p in (out, side_file(out, CARD_FILE), side_file(out, PARITY_FILE)) if p.exists()]
    if taken and not force:
        raise ElunetError(f"{', '.join(map(str, taken))} already exist{'s' if len(taken) == 1 else ''}", hint="pass --force to overwrite, or choose another --out")
    if out.is_dir():
        raise ElunetError(f"--out {out} is a folder", hint="--out names the .onnx file to write; use --repository DIR for a model repository")


@contextlib.contextmanager
def _staging_beside(out: Path):
    """A hidden folder beside ``out`` (same file system, so the final moves are renames).

    Always removed, and so are the folders created for it when nothing was written there.
    """
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging-{secrets.token_hex(4)}")
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
