"""`elunet build-engine`: an ONNX model -> a serialized TensorRT engine (``model.plan``).

- strongly typed network: the engine computes in the ONNX model's types (an
  fp16 export gives an fp16 engine), TensorRT does not pick precisions;
- one optimization profile over the batch axis (min/opt/max batch);
- a timing cache file, reused and updated across builds;
- a workspace limit;
- the ELU plugin: when the ONNX has EluPlugin nodes, the plugin library (or
  the Python plugin) is registered before parsing, and the built engine is
  inspected (IEngineInspector, JSON layer information) to prove the plugin
  layers are in it. The exporter's EluPlugin nodes carry a reference ONNX
  function too, which TensorRT would inline if no plugin were registered: a
  plan without plugin layers is refused, not written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from elunet.contracts import INPUT_NAME, OUTPUT_NAME, elu_plugin_contract
from elunet.errors import ElunetError
from elunet.plugins.tensorrt_import import import_tensorrt, tensorrt_logger

MIB = 1 << 20


@dataclass(frozen=True)
class EngineOptions:
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64
    workspace_mib: int = 1024
    timing_cache: Path | None = None
    plugin_libs: tuple[Path, ...] = ()
    python_plugin: bool = False

    def validate(self) -> "EngineOptions":
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ElunetError(
                f"batch sizes must satisfy 1 <= min <= opt <= max, got min={self.min_batch} opt={self.opt_batch} "
                f"max={self.max_batch}",
                hint="e.g. --min-batch 1 --opt-batch 8 --max-batch 64",
            )
        if self.workspace_mib < 1:
            raise ElunetError(f"--workspace must be at least 1 MiB, got {self.workspace_mib}")
        return self


@dataclass
class BuiltEngine:
    plan: bytes
    plugin_layers: int
    elu_plugin_nodes: int
    layers: list[dict] = field(default_factory=list)


def count_elu_plugin_nodes(onnx_path: Path) -> int:
    """EluPlugin nodes in the main graph (not inside the reference function)."""
    import onnx

    contract = elu_plugin_contract()
    model = onnx.load(str(onnx_path), load_external_data=False)
    return sum(1 for n in model.graph.node if n.op_type == contract.op_type and n.domain == contract.onnx_domain)


def register_elu_plugin(options: EngineOptions) -> None:
    from elunet.plugins.library import load_plugin_library
    from elunet.plugins.python_plugin import register_python_plugin

    if options.python_plugin:
        register_python_plugin()
        return
    for lib in options.plugin_libs or (None,):
        load_plugin_library(lib)


def strongly_typed_flags(trt) -> int:
    """TensorRT 10 needs the STRONGLY_TYPED flag; 11 is always strongly typed (the flag is deprecated, ignored)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def engine_plugin_layers(trt, plan: bytes) -> list[dict]:
    """The plugin layers of a built engine, from the engine inspector's JSON."""
    runtime = trt.Runtime(tensorrt_logger())
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise ElunetError("TensorRT could not deserialize the engine it just built (see its log above)")
    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", [])
    if layers and not isinstance(layers[0], dict):
        raise ElunetError("the engine inspector returned layer names only; it needs ProfilingVerbosity.DETAILED")
    return [layer for layer in layers if "plugin" in str(layer.get("LayerType", "")).lower()]


def build_engine(onnx_path: Path, options: EngineOptions, log=print) -> BuiltEngine:
    trt = import_tensorrt()
    options = options.validate()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ElunetError(f"no ONNX model at {onnx_path}", hint="export one with `elunet export`")

    plugin_nodes = count_elu_plugin_nodes(onnx_path)
    if plugin_nodes:
        register_elu_plugin(options)

    logger = tensorrt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(f"  {parser.get_error(i)}" for i in range(parser.num_errors))
        raise ElunetError(f"TensorRT's ONNX parser rejected {onnx_path}:\n{errors}",
                          hint="check the model with `elunet verify --backend onnxruntime` first")
    network_plugins = sum(1 for i in range(network.num_layers) if network.get_layer(i).type == trt.LayerType.PLUGIN_V3)
    if network_plugins < plugin_nodes:
        raise ElunetError(
            f"{onnx_path} has {plugin_nodes} EluPlugin nodes but the parsed network has {network_plugins} plugin "
            "layers: TensorRT inlined the reference function instead of using the plugin",
            hint="check that the plugin library registered (--plugin-lib) and that its name/version/namespace "
            "match elunet/elu_plugin.json",
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib * MIB)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if shape[0] != -1:
            raise ElunetError(
                f"input {tensor.name!r} has a fixed batch size {shape[0]}; build-engine needs a dynamic batch axis",
                hint="export with a dynamic batch axis (elunet export does by default)",
            )
        rest = shape[1:]
        if any(d < 0 for d in rest):
            raise ElunetError(f"input {tensor.name!r} has dynamic non-batch axes {shape}; only the batch may vary")
        profile.set_shape(tensor.name, (options.min_batch, *rest), (options.opt_batch, *rest),
                          (options.max_batch, *rest))
    config.add_optimization_profile(profile)

    cache_bytes = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    log(f"building a TensorRT {trt.__version__} engine for {onnx_path} (batch {options.min_batch}..{options.max_batch}, "
        f"opt {options.opt_batch}); this takes a while")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ElunetError("TensorRT failed to build the engine (see its log above)",
                          hint="a larger --workspace or a smaller --max-batch may help")
    plan = bytes(plan)
    if options.timing_cache is not None:
        from elunet.card import write_atomic

        write_atomic(options.timing_cache, bytes(config.get_timing_cache().serialize()))

    plugin_layers = engine_plugin_layers(trt, plan)
    if len(plugin_layers) < plugin_nodes:
        raise ElunetError(
            f"the engine has {len(plugin_layers)} plugin layers for {plugin_nodes} EluPlugin nodes: the plugin "
            "was replaced by its reference function",
            hint="load the plugin library before building (--plugin-lib) and rebuild",
        )
    return BuiltEngine(plan=plan, plugin_layers=len(plugin_layers), elu_plugin_nodes=plugin_nodes, layers=plugin_layers)


def engine_io(plan: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each I/O tensor's Triton data type and non-batch dims, read from the engine."""
    trt = import_tensorrt()
    engine = trt.Runtime(tensorrt_logger()).deserialize_cuda_engine(plan)
    triton_types = {trt.float32: "TYPE_FP32", trt.float16: "TYPE_FP16", trt.bfloat16: "TYPE_BF16"}
    io = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        io[name] = (triton_types[engine.get_tensor_dtype(name)], tuple(engine.get_tensor_shape(name))[1:])
    return io


def source_card_and_location(onnx_path: Path):
    """The model card, and (repository root, name, version) when the ONNX sits in a repository version folder."""
    from elunet.card import CARD_FILE, ModelCard

    onnx_path = Path(onnx_path).resolve()
    beside = onnx_path.parent / CARD_FILE
    if beside.is_file():
        card = ModelCard.load(beside)
        version_dir = onnx_path.parent
        if version_dir.name.isdigit():
            return card, (version_dir.parent.parent, version_dir.parent.name, int(version_dir.name))
        return card, None
    from elunet.export.card_metadata import card_from_onnx

    return card_from_onnx(onnx_path), None


def tensorrt_config(name: str, max_batch: int, io: dict[str, tuple[str, tuple[int, ...]]]) -> str:
    """Triton's config.pbtxt for a TensorRT plan with a dynamic batch axis."""
    from elunet.repository import LABELS_FILE

    def tensor(section: str, tensor_name: str, extra: list[str]) -> list[str]:
        data_type, dims = io[tensor_name]
        return [f"{section} [", "  {", f'    name: "{tensor_name}"', f"    data_type: {data_type}",
                f"    dims: [ {', '.join(map(str, dims))} ]", *extra, "  }", "]"]

    lines = [f'name: "{name}"', 'platform: "tensorrt_plan"', f"max_batch_size: {max_batch}",
             *tensor("input", INPUT_NAME, []),
             *tensor("output", OUTPUT_NAME, [f'    label_filename: "{LABELS_FILE}"']),
             "dynamic_batching { }"]
    return "\n".join(lines) + "\n"


def write_to_repository(built: BuiltEngine, card, repository: Path, name: str, version: int,
                        max_batch: int, force: bool = False) -> Path:
    """Write ROOT/name/{config.pbtxt,labels.txt} and ROOT/name/version/{model.plan,card.json}; returns the version folder."""
    import shutil

    from elunet.card import CARD_FILE, write_atomic
    from elunet.repository import CONFIG_FILE, LABELS_FILE, MODEL_FILES, ModelRepository

    repo = ModelRepository(repository)
    version_dir = repo.version_dir(name, version)
    if version_dir.exists() and not force:
        raise ElunetError(f"{version_dir} already exists", hint="pass --force to replace it, or choose --version")
    io = engine_io(built.plan)
    missing = {INPUT_NAME, OUTPUT_NAME} - set(io)
    if missing:
        raise ElunetError(f"the engine lacks the I/O tensors {sorted(missing)}; elunet models have "
                          f"{INPUT_NAME!r} -> {OUTPUT_NAME!r}", hint="export the model with `elunet export`")
    # Same as export: build the version under a temporary name, rename into place.
    staging = version_dir.with_name(f".{version}.building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / MODEL_FILES["tensorrt_plan"]).write_bytes(built.plan)
    card.model_copy(update={"name": name, "version": version}).save(staging / CARD_FILE)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    staging.replace(version_dir)
    write_atomic(repo.model_dir(name) / CONFIG_FILE, tensorrt_config(name, max_batch, io))
    write_atomic(repo.model_dir(name) / LABELS_FILE, "\n".join(card.labels) + "\n")
    return version_dir
