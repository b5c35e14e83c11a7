"""Publishing a built engine into the model repository, through the export stage's writer.

``REPOSITORY/NAME/VERSION/{model.plan, card.json[, parity.json]}`` and
``REPOSITORY/NAME/{config.pbtxt (platform tensorrt_plan), labels.txt}``:
staged, checked and renamed into place by elunet.export.repository_writer,
config.pbtxt written by elunet.model_config (one writer for both
platforms). A Triton model has one platform, so the engine is its own model
(default name ``<card name>-trt``) next to the ONNX one.

With a checkpoint, the staged engine is verified against PyTorch first
(`elunet verify`'s comparison, TensorRT runner) and published with its
parity.json; without one its card records ``parity: skipped``.
"""

from __future__ import annotations

from pathlib import Path

from elunet.card import CARD_FILE, ModelCard
from elunet.errors import ElunetError
from elunet.plugins.engine_builder import BuiltEngine, engine_io_dtype
from elunet.repository import MODEL_FILES, PARITY_FILE, ModelVersion


def publish_engine(
    built: BuiltEngine,
    card: ModelCard,
    *,
    repository: Path,
    name: str,
    version: int | None,
    max_batch_size: int,
    force: bool = False,
    checkpoint: Path | None = None,
    images: int | None = None,
    data_dir: Path | None = None,
    log=print,
) -> ModelVersion:
    from elunet.export.repository_writer import stage_version

    io_dtype = engine_io_dtype(built.plan)
    with stage_version(repository, name, version, force=force) as staged:
        plan_path = staged.path / MODEL_FILES["tensorrt_plan"]
        plan_path.write_bytes(built.plan)
        parity = "skipped"
        if checkpoint is not None:
            # The runtime reads from the card beside an engine whether it needs the ELU plugin, as serve will;
            # publish replaces this one with the published card.
            card.save(staged.path / CARD_FILE)
            report = verify_engine(plan_path, card, checkpoint, images=images, data_dir=data_dir)
            report.save(staged.path / PARITY_FILE)
            for line in report.lines():
                log(line)
            if not report.passed:
                raise report.gate_failure() or ElunetError(
                    "the engine failed parity against PyTorch: nothing was published",
                    hint="see the figures above; an fp16 engine needs an fp16 export's tolerances")
            parity = "passed"
        else:
            log("no --checkpoint: publishing without a parity check (the card records parity: skipped)")
        published_card = card.model_copy(update={
            "name": name, "version": staged.version, "export": card.export.model_copy(update={"parity": parity})})
        return staged.publish(published_card, platform="tensorrt_plan", max_batch_size=max_batch_size, io_dtype=io_dtype)


def verify_engine(plan_path: Path, card: ModelCard, checkpoint: Path, *, images: int | None, data_dir: Path | None):
    """`elunet verify --backend tensorrt` on the staged engine: its parity report."""
    from elunet.export.verify import verify_model
    from elunet.train.checkpoint import load_checkpoint

    extra = {"images": images} if images is not None else {}
    return verify_model(plan_path, load_checkpoint(checkpoint), backend="tensorrt", device="cuda", data_dir=data_dir,
                        model_card=card, **extra)
