"""Triton's protocol extensions that both front ends serve: model configuration, statistics, classification.

Each answer is built once, as the protobuf message of Triton's gRPC service
(tritonclient's generated ``service_pb2`` / ``model_config_pb2``): the gRPC
server returns it as is, the HTTP routes as Triton's JSON (``proto_json``:
field names as in the .proto, every field present, 64-bit integers as JSON
numbers — what perf_analyzer and Model Analyzer parse).
"""

from __future__ import annotations

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from elunet.dtypes import BY_V2
from elunet.model_config import model_config_pb2
from elunet.repository import LABELS_FILE, MODEL_FILES, parse_version

_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
          FieldDescriptor.TYPE_SFIXED64}


def proto_json(message) -> dict:
    """``message`` as Triton writes it in JSON."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _int64_as_numbers(message.DESCRIPTOR, data)


def _int64_as_numbers(descriptor, data: dict) -> dict:
    for name, value in data.items():
        field = descriptor.fields_by_name.get(name)
        if field is None:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                value_field = entry.fields_by_name["value"]
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    data[name] = {k: _int64_as_numbers(value_field.message_type, v) for k, v in value.items()}
            elif isinstance(value, list):
                data[name] = [_int64_as_numbers(entry, v) for v in value]
            elif isinstance(value, dict):
                data[name] = _int64_as_numbers(entry, value)
        elif field.type in _INT64:
            data[name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return data


# --- model configuration -------------------------------------------------------------------


def config_from_json(text):
    """Triton's load ``config`` parameter: a ModelConfig in protobuf's JSON form (400 when it is not)."""
    from elunet.serve.errors import bad_request

    if not isinstance(text, str):
        raise bad_request("the load parameter 'config' must be a string holding a ModelConfig as JSON")
    try:
        return json_format.Parse(text, model_config_pb2().ModelConfig())
    except json_format.ParseError as exc:
        raise bad_request(f"the load parameter 'config' is not a ModelConfig in JSON: {exc}") from None


def effective_config(served):
    """The ModelConfig a version is served with: its config.pbtxt completed with what elunet decided,
    as Triton completes a configuration (the scheduling in force, the model file's tensors, the
    instance groups, the version policy)."""
    pb2 = model_config_pb2()
    config = pb2.ModelConfig()
    if served.config is not None:
        config.CopyFrom(served.config)
    s, engine = served.scheduling, served.engine
    config.name = served.name
    if not config.platform and not config.backend:
        config.platform = engine.platform
    config.max_batch_size = s.max_batch_size
    model_input, model_output = served.interface.input, served.interface.output
    if not config.input:
        config.input.add(name=model_input.name, data_type=pb2.DataType.Value(BY_V2[model_input.datatype].triton),
                         format=pb2.ModelInput.FORMAT_NCHW, dims=list(model_input.dims))
    if not config.output:
        has_labels = (served.source.path.parent / LABELS_FILE).is_file()
        config.output.add(name=model_output.name, data_type=pb2.DataType.Value(BY_V2[model_output.datatype].triton),
                          dims=list(model_output.dims), label_filename=LABELS_FILE if has_labels else "")
    if s.dynamic:
        batching = config.dynamic_batching
        batching.max_queue_delay_microseconds = round(s.max_queue_delay_s * 1e6)
        del batching.preferred_batch_size[:]
        batching.preferred_batch_size.extend(s.preferred_batch_sizes)
        batching.default_queue_policy.max_queue_size = s.max_queue_size
        batching.default_queue_policy.default_timeout_microseconds = round((s.timeout_s or 0) * 1e6)  # 0: none, as in Triton
        batching.default_queue_policy.allow_timeout_override = s.allow_timeout_override
    del config.instance_group[:]
    kind = pb2.ModelInstanceGroup.KIND_GPU if engine.device.startswith("cuda") else pb2.ModelInstanceGroup.KIND_CPU
    group = config.instance_group.add(name=f"{served.name}_0", kind=kind, count=s.instances)
    if kind == pb2.ModelInstanceGroup.KIND_GPU:
        group.gpus.append(int(engine.device.partition(":")[2] or 0))
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if not config.default_model_filename and engine.platform in MODEL_FILES:
        config.default_model_filename = MODEL_FILES[engine.platform]
    return config


# --- statistics --------------------------------------------------------------------------------


def statistics_of(metrics, served: set[str], name: str | None, version: str | None):
    """The statistics extension's answer for every model, one, or one version; 404 for what has no counts."""
    from elunet.serve.errors import not_found

    if name is not None and name not in served and not metrics.stats(name):
        raise not_found(f"unknown model {name!r}; served models: {', '.join(sorted(served)) or 'none'}")
    number = parse_version(version) if version else None
    if version and number is None:
        raise not_found(f"model {name!r} has no version {version!r}")
    return statistics(metrics.stats(name, number))


def statistics(entries):
    """ModelStatisticsResponse for (name, version, InferStats) entries."""
    from tritonclient.grpc import service_pb2 as pb2

    response = pb2.ModelStatisticsResponse()
    for name, version, stats in entries:
        model = response.model_stats.add(name=name, version=str(version), last_inference=stats.last_inference_ms,
                                         inference_count=stats.inference_count, execution_count=stats.execution_count)
        for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"):
            duration = getattr(stats, field)
            getattr(model.inference_stats, field).MergeFrom(pb2.StatisticDuration(count=duration.count, ns=duration.ns))
        for size, batch in sorted(stats.batches.items()):
            entry = model.batch_stats.add(batch_size=size)
            for field in ("compute_input", "compute_infer", "compute_output"):
                duration = getattr(batch, field)
                getattr(entry, field).MergeFrom(pb2.StatisticDuration(count=duration.count, ns=duration.ns))
    return response


# --- classification ------------------------------------------------------------------------------


def classify(logits: np.ndarray, k: int, labels: tuple[str, ...]) -> np.ndarray:
    """Triton's classification extension: the top ``k`` classes of each row as "value:index:label", or "value:index"
    for a model without labels, as Triton answers (object array [n, k])."""
    k = min(k, logits.shape[1])
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return np.array([[f"{row[i]:f}:{i}:{labels[i]}" if labels else f"{row[i]:f}:{i}" for i in best] for row, best in zip(logits, order)], dtype=object).reshape(len(logits), k)


def serialize_bytes(values: np.ndarray) -> bytes:
    """A BYTES tensor in Triton's binary form: each element a 4-byte little-endian length, then its bytes."""
    out = bytearray()
    for value in values.ravel():
        data = value.encode() if isinstance(value, str) else bytes(value)
        out += len(data).to_bytes(4, "little") + data
    return bytes(out)
