"""config.pbtxt as Triton reads it: 0 and absent values, the fields elunet cannot honour (refused, or logged once with
the reason), and model_warmup run on every instance.

A real `elunet serve` on copies of the synthetic repository, with config.pbtxt files written here.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from fixtures_serve import LINEAR, SYNTHETIC_SHAPE, binary_infer_body, http, synthetic_card
from google.protobuf import text_format

from elunet.model_config import build_config, config_text, model_config_pb2
from elunet.serve.scheduling import unsupported

pytestmark = pytest.mark.slow

EXTRAS = """
dynamic_batching { priority_levels: 2 default_priority_level: 1 preserve_ordering: true }
instance_group [ { count: 1 kind: KIND_CPU rate_limiter { priority: 1 } } ]
response_cache { enable: true }
"""
WARMUP = """
dynamic_batching {}
instance_group [ { count: 2 kind: KIND_CPU } ]
model_warmup [
  { name: "zeros" batch_size: 4 inputs { key: "input" value: { data_type: TYPE_FP32 dims: [ 1, 8, 8 ] zero_data: true } } },
  { name: "noise" batch_size: 2 count: 3 inputs { key: "input" value: { data_type: TYPE_FP32 dims: [ 1, 8, 8 ] random_data: true } } },
  { name: "file" batch_size: 1 inputs { key: "input" value: { data_type: TYPE_FP32 dims: [ 1, 8, 8 ] input_data_file: "one.bin" } } }
]
"""
NOTES = ("priority levels", "preserve_ordering", "rate_limiter", "response_cache")


def base(name: str) -> str:
    """The config.pbtxt of a synthetic model, as elunet export writes it, without dynamic batching."""
    config = build_config(synthetic_card(name), name=name, platform="onnxruntime_onnx", max_batch_size=8)
    config.ClearField("dynamic_batching")
    return config_text(config)


def parsed(text: str):
    return text_format.Parse(text, model_config_pb2().ModelConfig())


def test_fields_elunet_cannot_honour_are_refused_or_named():
    refused, ignored = unsupported(parsed(base("m") + EXTRAS), "cpu")
    assert refused == [] and [note.split(":")[0] for note in ignored] == [
        "instance_group (unnamed) rate_limiter", "dynamic_batching priority levels", "dynamic_batching.preserve_ordering",
        "response_cache"]
    gpu = base("m") + 'instance_group [ { name: "g" count: 1 kind: KIND_GPU } ]'
    (why,), _ = unsupported(parsed(gpu), "cpu")
    assert "KIND_GPU" in why and "computes on cpu" in why and "--device cuda" in why
    assert unsupported(parsed(gpu), "cuda:0") == ([], [])
    for field, text in (("sequence_batching", "sequence_batching {}"), ("ensemble_scheduling", "ensemble_scheduling {}"),
                        ("decoupled", "model_transaction_policy { decoupled: true }")):
        (why,), _ = unsupported(parsed(base("m") + text), "cpu")
        assert field in why
    assert unsupported(parsed(base("m") + "dynamic_batching {}"), "cpu") == ([], [])
    assert unsupported(None, "cpu") == ([], [])


@pytest.fixture(scope="module")
def triton_configs(tmp_path_factory, synthetic_repository, start_server):
    root = tmp_path_factory.mktemp("triton-configs")
    configs = {
        "extras": EXTRAS,
        "gpu-only": "instance_group [ { count: 1 kind: KIND_GPU } ]",
        "warm": WARMUP,
        "empty-batching": "dynamic_batching {}",
        "bad-warmup": WARMUP.replace("dims: [ 1, 8, 8 ] zero_data", "dims: [ 3, 8, 8 ] zero_data"),
        "missing-file": WARMUP.replace("one.bin", "absent.bin"),
    }
    for name, text in configs.items():
        shutil.copytree(synthetic_repository / LINEAR, root / name)
        (root / name / "config.pbtxt").write_text(base(name) + text)
        (root / name / "warmup").mkdir()
        (root / name / "warmup" / "one.bin").write_bytes(np.full(SYNTHETIC_SHAPE, 0.5, np.float32).tobytes())
    # The server's scheduling options, none of which a model with a config.pbtxt reads.
    server = start_server(root, wait=False, allow_unverified=True, strict_readiness=False, max_queue_delay_ms=50, max_queue_size=3,
                          request_timeout_s=2)
    server.wait_ready()
    index = {m["name"]: m for m in json.loads(http("POST", f"{server.url}/v2/repository/index", b"{}", {"Content-Type": "application/json"})[2])}
    while any(m["state"] == "LOADING" for m in index.values()):
        time.sleep(0.2)
        index = {m["name"]: m for m in json.loads(http("POST", f"{server.url}/v2/repository/index", b"{}", {"Content-Type": "application/json"})[2])}
    return server, index


def test_a_gpu_instance_group_on_a_cpu_server_is_refused_with_the_reason(triton_configs):
    _, index = triton_configs
    assert index["gpu-only"]["state"] == "UNAVAILABLE"
    assert "KIND_GPU" in index["gpu-only"]["reason"] and "computes on cpu" in index["gpu-only"]["reason"]


def test_fields_that_only_tune_triton_serve_and_are_logged_once_each(triton_configs):
    server, index = triton_configs
    assert index["extras"]["state"] == "READY"
    body, headers = binary_infer_body(np.zeros((1, *SYNTHETIC_SHAPE), np.float32))
    assert http("POST", f"{server.url}/v2/models/extras/infer", body, headers)[0] == 200
    lines = [line for line in server.log().splitlines() if "model extras v1: config.pbtxt:" in line]
    assert len(lines) == len(NOTES), lines
    for note in NOTES:
        assert sum(note in line for line in lines) == 1, (note, lines)


def test_dynamic_batching_empty_waits_0_with_no_queue_limit_and_no_timeout_whatever_the_server_options(triton_configs):
    server, index = triton_configs
    assert index["empty-batching"]["state"] == "READY"
    config = json.loads(http("GET", f"{server.url}/v2/models/empty-batching/config")[2])
    batching = config["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 0
    assert batching["default_queue_policy"]["max_queue_size"] == 0 and batching["default_queue_policy"]["default_timeout_microseconds"] == 0
    (ready,) = [line for line in server.log().splitlines() if "model empty-batching v1 ready" in line]
    assert "max batch 8, delay 0 ms, queue unbounded, no timeout" in ready, ready


def test_model_warmup_samples_run_on_every_instance(triton_configs):
    server, index = triton_configs
    assert index["warm"]["state"] == "READY"
    log = server.log()
    for instance in (0, 1):
        for sample, batch, times in (("zeros", 4, 1), ("noise", 2, 3), ("file", 1, 1)):
            assert f"model warm v1: instance {instance} ran warm-up sample {sample} (batch {batch}) {times} time(s)" in log, log[-3000:]


def test_a_warmup_that_does_not_fit_the_model_stops_its_load_with_what_was_expected(triton_configs):
    _, index = triton_configs
    bad, missing = index["bad-warmup"], index["missing-file"]
    assert bad["state"] == missing["state"] == "UNAVAILABLE"
    assert "model_warmup zeros: dims [3, 8, 8], the model's input has dims [1, 8, 8]" in bad["reason"], bad["reason"]
    assert "model_warmup file: input_data_file" in missing["reason"] and "absent.bin does not exist" in missing["reason"]
