"""`elunet build-engine`: an ONNX model -> a serialized TensorRT engine (``model.plan``).

- strongly typed network: the engine computes in the ONNX model's types (an
  fp16 export gives an fp16 engine), TensorRT does not pick precisions;
- explicit quantization: an int8 export is a QDQ graph (QuantizeLinear /
  DequantizeLinear, symmetric int8, weights per channel), which TensorRT's
  ONNX parser turns into IQuantizeLayer / IDequantizeLayer; with strong
  typing TensorRT builds int8 kernels where the Q/DQ say so, and no precision
  flag (kINT8, kFP16) may be set (TensorRT 10/11 "Explicit Quantization").
  The built engine is inspected for layers with int8 tensors, so an engine in
  which TensorRT computed everything in float is never published;
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
                hint="e.g. --min-batch 1 --opt-batch 8 --max-batch-size 64",
            )
        if self.workspace_mib < 1:
            raise ElunetError(f"--workspace must be at least 1 MiB, got {self.workspace_mib}")
        return self


@dataclass
class BuiltEngine:
    plan: bytes
    plugin_layers: int
    elu_plugin_nodes: int
    layers: list[dict] = field(default_factory=list)  # the plugin layers
    quantize_nodes: int = 0  # QuantizeLinear nodes in the ONNX (an int8 export)
    int8_layers: int = 0  # engine layers with int8 tensors


@dataclass(frozen=True)
class OnnxNodes:
    elu_plugin: int  # EluPlugin nodes in the main graph (not inside the reference function)
    quantize: int  # QuantizeLinear nodes: the graph is explicitly quantized


def count_onnx_nodes(onnx_path: Path) -> OnnxNodes:
    import onnx

    contract = elu_plugin_contract()
    model = onnx.load(str(onnx_path), load_external_data=False)
    ops = [(n.domain or "", n.op_type) for n in model.graph.node]
    return OnnxNodes(elu_plugin=ops.count((contract.onnx_domain, contract.op_type)), quantize=ops.count(("", "QuantizeLinear")))


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


def engine_layers(trt, plan: bytes) -> list[dict]:
    """The layers of a built engine, from the engine inspector's JSON."""
    runtime = trt.Runtime(tensorrt_logger())
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise ElunetError("TensorRT could not deserialize the engine it just built (see its log above)")
    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", [])
    if layers and not isinstance(layers[0], dict):
        raise ElunetError("the engine inspector returned layer names only; it needs ProfilingVerbosity.DETAILED")
    return layers


def plugin_layers(layers: list[dict]) -> list[dict]:
    return [layer for layer in layers if "plugin" in str(layer.get("LayerType", "")).lower()]


def int8_layers(layers: list[dict]) -> list[dict]:
    """Layers with an int8 input or output; the inspector names each tensor's format and type in
    "Format/Datatype", e.g. "Thirty-two wide channel vectorized row major Int8 format"."""
    return [
        layer
        for layer in layers
        if any("int8" in str(t.get("Format/Datatype", "")).lower() for t in (*layer.get("Inputs", []), *layer.get("Outputs", [])) if isinstance(t, dict))
    ]


def builder_config(trt, builder, options: EngineOptions):
    """The builder config every engine is built with (its optimization profile is added by build_engine)."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib * MIB)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    # TensorRT may run float32 convolutions and matrix products in TF32 (a 10-bit mantissa) unless told
    # not to, and that alone exceeds the fp32 parity tolerance (1e-4); the graph's types are the contract
    # (strongly typed), so a float32 layer of any engine computes in float32. The torch engine turns TF32
    # off for the same reason.
    config.clear_flag(trt.BuilderFlag.TF32)
    return config


def build_engine(onnx_path: Path, options: EngineOptions, log=print) -> BuiltEngine:
    trt = import_tensorrt()
    options = options.validate()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ElunetError(f"no ONNX model at {onnx_path}", hint="export one with `elunet export`")

    nodes = count_onnx_nodes(onnx_path)
    plugin_nodes = nodes.elu_plugin
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

    config = builder_config(trt, builder, options)
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
        f"opt {options.opt_batch}{', explicitly quantized: ' + str(nodes.quantize) + ' QuantizeLinear nodes' if nodes.quantize else ''}); "
        "this takes a while")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ElunetError("TensorRT failed to build the engine (see its log above)",
                          hint="a larger --workspace or a smaller --max-batch-size may help")
    plan = bytes(plan)
    if options.timing_cache is not None:
        from elunet.files import write_atomic

        write_atomic(options.timing_cache, bytes(config.get_timing_cache().serialize()))

    layers = engine_layers(trt, plan)
    plugins, quantized = plugin_layers(layers), int8_layers(layers)
    if len(plugins) < plugin_nodes:
        raise ElunetError(
            f"the engine has {len(plugins)} plugin layers for {plugin_nodes} EluPlugin nodes: the plugin "
            "was replaced by its reference function",
            hint="load the plugin library before building (--plugin-lib) and rebuild",
        )
    if nodes.quantize and not quantized:
        raise ElunetError(
            f"{onnx_path} is explicitly quantized ({nodes.quantize} QuantizeLinear nodes) but the engine has no int8 layer: "
            "TensorRT computed it in float",
            hint="see TensorRT's log above for why; for a GPU without int8 kernels export --dtype fp16 or fp32 instead",
        )
    return BuiltEngine(plan=plan, plugin_layers=len(plugins), elu_plugin_nodes=plugin_nodes, layers=plugins,
                       quantize_nodes=nodes.quantize, int8_layers=len(quantized))


def engine_io_dtype(plan: bytes) -> str:
    """The element type ("fp32"/"fp16") of the engine's input and output, for Triton's config."""
    trt = import_tensorrt()
    engine = trt.Runtime(tensorrt_logger()).deserialize_cuda_engine(plan)
    names = {trt.float32: "fp32", trt.float16: "fp16"}
    found = {engine.get_tensor_name(i): engine.get_tensor_dtype(engine.get_tensor_name(i))
             for i in range(engine.num_io_tensors)}
    if set(found) != {INPUT_NAME, OUTPUT_NAME}:
        raise ElunetError(f"the engine has I/O tensors {sorted(found)}; elunet models have {INPUT_NAME!r} -> "
                          f"{OUTPUT_NAME!r}", hint="build engines from models written by `elunet export`")
    dtypes = {names.get(t, str(t)) for t in found.values()}
    if len(dtypes) != 1 or not dtypes <= set(names.values()):
        raise ElunetError(f"the engine's input and output types are {sorted(dtypes)}; Triton's config needs one of "
                          f"{sorted(names.values())} for both")
    return dtypes.pop()


def source_card_and_location(onnx_path: Path):
    """The model card inside the ONNX, and (repository root, version) when the ONNX sits in a repository."""
    from elunet.card import CARD_FILE
    from elunet.export.card_metadata import card_from_onnx

    onnx_path = Path(onnx_path).resolve()
    card = card_from_onnx(onnx_path)
    if card.export is None:
        raise ElunetError(f"{onnx_path} was not written by `elunet export` (its card has no export section)",
                          hint="export the checkpoint with `elunet export` first")
    version_dir = onnx_path.parent
    if version_dir.name.isdigit() and (version_dir / CARD_FILE).is_file():
        return card, (version_dir.parent.parent, int(version_dir.name))
    return card, None
