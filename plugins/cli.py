"""Commands of the plugins stage: `elunet build-engine`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from elunet.cli_options import max_batch_size_option, skip_verify_option


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the root `elunet` app."""
    app.command("build-engine")(build_engine_command)


def build_engine_command(
    model: Path = typer.Argument(..., help="ONNX model from `elunet export` (e.g. models/fashion-cnn/1/model.onnx)"),
    min_batch: int = typer.Option(1, "--min-batch", help="smallest batch the engine accepts"),
    opt_batch: int = typer.Option(8, "--opt-batch", help="batch TensorRT tunes kernels for"),
    max_batch_size: int = max_batch_size_option("; also the engine profile's largest batch"),
    workspace: int = typer.Option(1024, "--workspace", help="builder workspace limit, MiB"),
    timing_cache: Optional[Path] = typer.Option(
        None, "--timing-cache", help="timing cache file: read if it exists, updated after the build (faster rebuilds)"),
    plugin_lib: list[Path] = typer.Option(
        [], "--plugin-lib", help="ELU plugin library (default: $ELUNET_TRT_PLUGIN_LIB, build/plugins/, the package)"),
    python_plugin: bool = typer.Option(
        False, "--python-plugin", help="use the tensorrt.plugin (Python) ELU plugin instead of the compiled library"),
    repository: Optional[Path] = typer.Option(
        None, "--repository", help="model repository to publish into (default: the one MODEL is in)"),
    name: Optional[str] = typer.Option(None, "--name", help="model name in the repository (default: <card name>-trt)"),
    version: Optional[int] = typer.Option(
        None, "--version", min=1,
        help="version (default: the ONNX model's version if it is in a repository, else the next free one)"),
    force: bool = typer.Option(False, "--force", help="replace an existing version"),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="verify the engine against this PyTorch checkpoint before publishing (parity.json)"),
    images: Optional[int] = typer.Option(None, "--images", min=13, help="real test images for that parity check"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="where the dataset is, if not in the default places"),
    skip_verify: bool = skip_verify_option(),
) -> None:
    """Build a TensorRT engine (model.plan) from an exported ONNX model and publish it in the model repository.

    Publishes REPOSITORY/NAME/VERSION/{model.plan, card.json, parity.json} and REPOSITORY/NAME/{config.pbtxt,
    labels.txt} for Triton's tensorrt_plan platform. With --checkpoint the engine is first verified against
    PyTorch (as `elunet verify --backend tensorrt`), and nothing is published if parity fails.

    An int8 export (`elunet export --dtype int8`, a QDQ graph) builds an explicitly quantized engine: strongly typed,
    int8 where the graph's Q/DQ say so, no precision flags; the engine is checked to hold int8 layers, and with
    --checkpoint it must pass the export's accuracy gate (whole test split) instead of element-wise tolerances.

    Models with the ELU plugin op need the plugin library (cmake -S plugins/elu -B build/plugins) or
    --python-plugin; the built engine is checked to contain the plugin layers. Needs TensorRT and an NVIDIA GPU;
    an engine runs only on the GPU type and TensorRT version that built it.

    Example: elunet build-engine models/fashion-cnn-plugin/1/model.onnx --checkpoint runs/demo --max-batch-size 64
    """
    from elunet.errors import ElunetError
    from elunet.plugins.engine_builder import EngineOptions, build_engine, source_card_and_location
    from elunet.plugins.publish_engine import publish_engine
    from elunet.plugins.tensorrt_import import import_tensorrt
    from elunet.repository import check_model_name

    if checkpoint is None and not skip_verify:
        raise ElunetError("no --checkpoint to verify the engine against: an engine is published only with its parity checked",
                          hint="pass --checkpoint RUN_DIR (the training run), or --skip-verify to publish it unverified (parity: skipped)")
    import_tensorrt()  # after the arguments are checked: without TensorRT nothing else matters
    options = EngineOptions(min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch_size, workspace_mib=workspace,
                            timing_cache=timing_cache, plugin_libs=tuple(plugin_lib),
                            python_plugin=python_plugin).validate()
    card, location = source_card_and_location(model)
    if repository is None:
        if location is None:
            raise ElunetError(f"{model} is not inside a model repository, so there is no default --repository",
                              hint="pass --repository DIR")
        repository = location[0]
    name = check_model_name(name or f"{card.name}-trt")
    if version is None and location is not None:
        version = location[1]
    built = build_engine(model, options, log=typer.echo)
    published = publish_engine(built, card, repository=repository, name=name, version=version, max_batch_size=max_batch_size,
                               force=force, checkpoint=checkpoint, images=images, data_dir=data_dir, log=typer.echo)
    typer.echo(f"published {published.path} ({len(built.plan) / 2**20:.1f} MiB engine, {built.plugin_layers} plugin "
               f"layers for {built.elu_plugin_nodes} EluPlugin nodes, {built.int8_layers} int8 layers)")
