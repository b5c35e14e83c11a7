"""Commands of the export stage: `elunet export` and `elunet verify`.

torch, onnx and onnxruntime are imported inside the commands, so that
`elunet --help` works without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from elunet.export.parity import DEFAULT_BATCH, DEFAULT_IMAGES, DEFAULT_TOLERANCES, ODD_BATCH
from elunet.export.parity import DEFAULT_ACCURACY_GATES
from elunet.export.settings import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_OPSET,
    DTYPES,
    ELU_MODES,
    EXPORTERS,
    IO_DTYPE,
    OPSET_RANGE,
    QUANTIZED_DTYPES,
    ExportSettings,
)
from elunet.export.verify import BACKENDS, DEFAULT_BACKEND, DEVICES
from elunet.cli_options import max_batch_size_option, skip_verify_option
from elunet.repository import IMAGE_MODEL_SUFFIX, PARITY_FILE

PARITY_EXIT_CODE = 1  # over tolerance; elunet exits 2 for usage errors


def _echo_err(line: str) -> None:
    typer.echo(line, err=True)


def _tolerances(index: int) -> str:
    return ", ".join(f"{t[index]:g} for {d} graphs" for d, t in DEFAULT_TOLERANCES.items() if d not in DEFAULT_ACCURACY_GATES)


def _gates(field: str) -> str:
    return ", ".join(f"{getattr(g, field):g} for {d} graphs" for d, g in DEFAULT_ACCURACY_GATES.items())


QUANTIZED = "/".join(QUANTIZED_DTYPES)
LOOSER = "the defaults are also the limits: looser only with `elunet verify --loosened`, whose certificate never serves"
MIN_TOP1_HELP = (
    f"required top-1 agreement with PyTorch: in every input set for float graphs, counting only flips beyond tolerance "
    f"(default: {_tolerances(2)}), on the whole test split for {QUANTIZED} graphs (default: {_gates('min_top1_agreement')}); {LOOSER}"
)
MAX_DROP_HELP = (
    f"{QUANTIZED} graphs: test accuracy on the whole test split may fall at most this many percentage points "
    f"below float32 PyTorch's (default: {_gates('max_accuracy_drop_points')}); {LOOSER}"
)


def _quantization_options(dtype: str, method: str | None, count: int | None) -> dict:
    """--calibration-* for a quantized dtype; refused for others rather than ignored."""
    given = [o for o, v in (("--calibration-method", method), ("--calibration-images", count)) if v is not None]
    if dtype not in QUANTIZED_DTYPES:
        if given:
            from elunet.errors import ElunetError

            raise ElunetError(f"{' and '.join(given)} calibrate {QUANTIZED} exports; this one is --dtype {dtype}", hint=f"add --dtype {QUANTIZED_DTYPES[0]}, or drop {' and '.join(given)}")
        return {}
    return {k: v for k, v in (("calibration_method", method), ("calibration_images", count)) if v is not None}


def export(
    checkpoint: Path = typer.Argument(..., help="run folder (its latest checkpoint), checkpoint folder, or model-repository version folder"),
    elu: Literal[ELU_MODES] = typer.Option(
        "native", "--elu", help="native: ONNX Elu nodes; plugin: the op TensorRT's ELU plugin implements, plus an ONNX function so other runtimes run it too"
    ),
    dtype: Literal[DTYPES] = typer.Option(
        "fp32",
        "--dtype",
        help=f"what the graph computes in; its input and output stay {IO_DTYPE}. int8: static QDQ quantization by ONNX Runtime "
        "(symmetric int8, weights per channel), calibrated on real training images; the normalization, the logits and the ELU "
        "layers stay float32 (ONNX Runtime has no int8 Elu: each Elu runs between DequantizeLinear and QuantizeLinear); "
        "judged by the accuracy gate",
    ),
    opset: int = typer.Option(
        DEFAULT_OPSET, "--opset", help=f"ONNX opset (dynamo: {OPSET_RANGE['dynamo'][0]}..{OPSET_RANGE['dynamo'][1]}, torchscript: {OPSET_RANGE['torchscript'][0]}..{OPSET_RANGE['torchscript'][1]})"
    ),
    exporter: Literal[EXPORTERS] = typer.Option("dynamo", "--exporter", help="dynamo: torch.onnx's torch.export-based exporter; torchscript: the legacy tracer, as a fallback"),
    out: Optional[Path] = typer.Option(None, "--out", help="write one .onnx file, with card.json and parity.json beside it"),
    repository: Optional[Path] = typer.Option(None, "--repository", help="publish into this Triton model repository: DIR/<name>/<version>/model.onnx"),
    name: Optional[str] = typer.Option(None, "--name", help="model name (default: the checkpoint card's)"),
    version: Optional[int] = typer.Option(None, "--version", min=1, help="version (default: the next free one in the repository; the card's for --out)"),
    force: bool = typer.Option(False, "--force", help="overwrite existing files or replace an existing version"),
    skip_verify: bool = skip_verify_option(),
    images: int = typer.Option(DEFAULT_IMAGES, "--images", min=ODD_BATCH, help="real test images the parity check uses"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="where the dataset is, if not in the default places (see `elunet datasets`)"),
    max_batch_size: int = max_batch_size_option(),
    calibration_method: Optional[Literal[CALIBRATION_METHODS]] = typer.Option(
        None,
        "--calibration-method",
        help=f"{QUANTIZED}: how the activation ranges are found, one of {', '.join(CALIBRATION_METHODS)} "
        f"(ONNX Runtime's MinMax, Entropy, Percentile; default {DEFAULT_CALIBRATION_METHOD}, measured in the README; "
        "ONNX Runtime 1.32's entropy, with its fixed 128 histogram bins, gives minmax's ranges)",
    ),
    calibration_images: Optional[int] = typer.Option(
        None, "--calibration-images", min=1, help=f"{QUANTIZED}: random training images to calibrate on (default {DEFAULT_CALIBRATION_IMAGES}, measured in the README)"
    ),
    min_top1: Optional[float] = typer.Option(None, "--min-top1", min=0.0, max=1.0, help=MIN_TOP1_HELP),
    max_accuracy_drop: Optional[float] = typer.Option(None, "--max-accuracy-drop", min=0.0, max=100.0, help=MAX_DROP_HELP),
    image_model: bool = typer.Option(
        False, "--image-model", help=f"with --repository: also publish <name>{IMAGE_MODEL_SUFFIX}, the same model taking encoded image files "
        "(a TYPE_STRING input, one file per batch element) that the server decodes with the card's preprocessing"),
) -> None:
    """Export a checkpoint to ONNX, check it, verify it against PyTorch, then write or publish it.

    Examples:

      elunet export runs/demo --out model.onnx

      elunet export runs/demo --repository models --elu plugin --dtype fp16 --name fashion-cnn-plugin

      elunet export runs/demo --repository models --dtype int8 --name fashion-cnn-int8

      elunet export runs/demo --repository models --image-model

    Nothing is written unless the graph checks and the parity verification
    pass; an int8 graph must pass its accuracy gate on the whole test split
    (by default at most 0.5 points of accuracy lost, 99 % top-1 agreement).
    Exit code 1: parity failed; 2: any other error.
    """
    from elunet.export.pipeline import export_checkpoint

    result = export_checkpoint(
        checkpoint,
        ExportSettings(elu_mode=elu, dtype=dtype, opset=opset, exporter=exporter, **_quantization_options(dtype, calibration_method, calibration_images)),
        out=out,
        repository=repository,
        name=name,
        version=version,
        force=force,
        skip_verify=skip_verify,
        images=images,
        data_dir=data_dir,
        max_batch_size=max_batch_size,
        min_top1=min_top1,
        max_accuracy_drop=max_accuracy_drop,
        image_model=image_model,
        log=_echo_err,
    )
    if not result.passed:
        gate = result.report.gate_failure()
        typer.secho(f"error: {gate.message if gate else 'parity failed; nothing was written'}", fg=typer.colors.RED, err=True)
        if gate:
            typer.echo(f"  hint: {gate.hint}", err=True)
        raise typer.Exit(PARITY_EXIT_CODE)
    typer.echo(str(result.model_path))


def verify(
    model: Path = typer.Argument(..., help="an ONNX file written by `elunet export`"),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="the checkpoint it was exported from (run, checkpoint or version folder)"),
    backend: Literal[BACKENDS] = typer.Option(DEFAULT_BACKEND, "--backend", help="what runs the model under test (tensorrt: needs the tensorrt package and a GPU)"),
    device: Literal[DEVICES] = typer.Option("auto", "--device", help="ONNX Runtime's execution provider; auto: CUDA when available, else CPU"),
    atol: Optional[float] = typer.Option(None, "--atol", help=f"absolute tolerance (default: {_tolerances(0)}; {QUANTIZED} graphs: not judged element-wise); {LOOSER}"),
    rtol: Optional[float] = typer.Option(None, "--rtol", help=f"relative tolerance (default: {_tolerances(1)}); an element fails only when both are exceeded; {LOOSER}"),
    min_top1: Optional[float] = typer.Option(None, "--min-top1", min=0.0, max=1.0, help=MIN_TOP1_HELP),
    max_accuracy_drop: Optional[float] = typer.Option(None, "--max-accuracy-drop", min=0.0, max=100.0, help=MAX_DROP_HELP),
    images: int = typer.Option(DEFAULT_IMAGES, "--images", min=ODD_BATCH, help=f"real test images to compare on ({QUANTIZED} graphs: always the whole test split)"),
    batch_size: int = typer.Option(DEFAULT_BATCH, "--batch-size", min=1, help="batch size for the test images"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="where the dataset is, if not in the default places"),
    report: Optional[Path] = typer.Option(
        None, "--report", help=f"where to write the certificate (default: beside MODEL, parity.<backend>-<device>.json, so that the {PARITY_FILE} export wrote stays)"
    ),
    loosened: bool = typer.Option(
        False, "--loosened", help="accept tolerances looser than the defaults, to measure: the certificate is marked loosened and never serves or publishes"
    ),
) -> None:
    """Compare an exported model with its PyTorch checkpoint; write the parity certificate.

    Inputs: real test-set images (in batches of --batch-size, and batches of 1
    and 13) and stress inputs (large magnitudes, negative saturation, zeros,
    ones). Reported per input set: max abs and rel error, the atol that would
    have been needed, top-1 agreement. Exit code 1 when over tolerance.

    int8 graphs are judged by accuracy on the whole test split instead
    (--max-accuracy-drop, --min-top1); their element-wise figures are recorded.
    """
    from elunet.export.card_metadata import card_from_onnx
    from elunet.export.parity import criteria
    from elunet.certificate import RunsOn, target_certificate
    from elunet.export.verify import verify_model, write_certificate
    from elunet.train.checkpoint import load_checkpoint

    card = card_from_onnx(model)
    tolerance, gate = criteria(
        card.export.dtype if card.export else "fp32", atol=atol, rtol=rtol, min_top1=min_top1, max_accuracy_drop=max_accuracy_drop, loosen=loosened
    )
    result = verify_model(
        model,
        load_checkpoint(checkpoint),
        backend=backend,
        device=device,
        tolerance=tolerance,
        accuracy_gate=gate,
        images=images,
        batch_size=batch_size,
        data_dir=data_dir,
        model_card=card,
    )
    path = write_certificate(result, report or target_certificate(model, RunsOn(**result.data["runs_on"])))
    for line in result.lines():
        typer.echo(line)
    typer.echo(f"wrote {path}")
    if not result.passed:
        raise typer.Exit(PARITY_EXIT_CODE)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root `elunet` app."""
    app.command(name="export")(export)
    app.command(name="verify")(verify)
