"""config.pbtxt decides how a model is scheduled (Triton's ModelConfig), and one that contradicts its model is refused.

Real `elunet serve` processes on copies of the synthetic repository, with config.pbtxt files written here.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fixtures_serve import LINEAR, SYNTHETIC_SHAPE, binary_infer_body, http

from elunet.model_config import model_config_pb2
from elunet.runtime.cpus import available_cpus
from elunet.serve.scheduling import AUTO_MAX_INSTANCES, ONE_INSTANCE_BELOW_S_PER_IMAGE, scheduling
from elunet.serve.settings import load_settings

pytestmark = pytest.mark.slow

TUNED = """
name: "synthetic-linear"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 1, 8, 8 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]
dynamic_batching {
  max_queue_delay_microseconds: 20000
  preferred_batch_size: [ 4, 8 ]
  default_queue_policy { max_queue_size: 500 default_timeout_microseconds: 9000000 }
}
instance_group [ { count: 2 kind: KIND_CPU }, { count: 1 kind: KIND_CPU } ]
"""

CONTRADICTING = """
name: "another-name"
platform: "tensorrt_plan"
max_batch_size: 16
input [ { name: "input" data_type: TYPE_FP16 dims: [ 3, 8, 8 ] } ]
output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] } ]
"""


def repository_with(tmp_path, configs: dict[str, str], synthetic_repository):
    root = tmp_path / "repository"
    for name, text in configs.items():
        shutil.copytree(synthetic_repository / LINEAR, root / name)
        (root / name / "config.pbtxt").write_text(text)
    return root


def infer(url: str, model: str, n: int = 1):
    body, headers = binary_infer_body(np.random.default_rng(n).random((n, *SYNTHETIC_SHAPE), dtype=np.float32))
    return http("POST", f"{url}/v2/models/{model}/infer", body, headers)


def test_config_pbtxt_sets_batching_queue_and_instances_over_the_server_defaults(tmp_path, synthetic_repository, start_server):
    root = repository_with(tmp_path, {LINEAR: TUNED}, synthetic_repository)
    server = start_server(root, max_batch_size=64, max_queue_delay_ms=0, instances=1, max_queue_size=4, allow_unverified=True)
    metrics = http("GET", server.url + "/metrics")[2].decode()
    (line,) = [m for m in metrics.splitlines() if m.startswith("elunet_inference_scheduling{")]
    for label in ('max_batch_size="16"', 'max_queue_delay_us="20000"', 'preferred_batch_sizes="4,8"', 'max_queue_size="500"', 'instances="3"'):
        assert label in line, line
    assert "3 instance(s)" in server.log() and "delay 20 ms" in server.log()

    t0 = time.monotonic()
    assert infer(server.url, LINEAR)[0] == 200
    assert time.monotonic() - t0 >= 0.019, "a lone request waits for the 20 ms queue delay of config.pbtxt"
    with ThreadPoolExecutor(24) as pool:  # more than the server's queue default of 4 requests: config's 500 applies
        statuses = list(pool.map(lambda k: infer(server.url, LINEAR, 1 + k % 5)[0], range(240)))
    assert statuses == [200] * 240
    metrics = http("GET", server.url + "/metrics")[2].decode()
    used = [m for m in metrics.splitlines() if m.startswith("elunet_inference_instance_exec_count_total") and float(m.split()[-1]) > 0]
    assert len(used) == 3, used
    batch_counts = {m.split('le="')[1].split('"')[0]: float(m.split()[-1]) for m in metrics.splitlines() if m.startswith("elunet_inference_batch_size_bucket")}
    assert batch_counts["16.0"] == batch_counts["+Inf"], f"no batch may exceed config's max_batch_size 16: {batch_counts}"


def test_the_cpus_are_shared_by_every_instance_that_loads_server_defaults_included(tmp_path, synthetic_repository, start_server):
    # One model without config.pbtxt (an automatic count, at most 2) and one whose instance_group asks 3: the CPUs
    # are shared out for 5 instances before the first count is chosen. Counting 1 for the first once gave each
    # instance twice its share, and 2 x 2 threads on 2 cores cost elu-cifar11 a fifth of its served throughput.
    root = repository_with(tmp_path, {LINEAR: "", "tuned": TUNED.replace('"synthetic-linear"', '"tuned"')}, synthetic_repository)
    (root / LINEAR / "config.pbtxt").unlink()
    server = start_server(root, allow_unverified=True)
    cpus = available_cpus()
    assert f"5 instance(s) in all (automatic counts at their most) share {cpus} CPU(s): {max(1, cpus // 5)} intra-op thread(s) each" in server.log(), server.log()
    metrics = http("GET", server.url + "/metrics")[2].decode()
    counts = sorted(m.split('instances="')[1].split('"')[0] for m in metrics.splitlines() if m.startswith("elunet_inference_scheduling{"))
    assert counts == ["1", "3"], f"the synthetic linear model computes faster than any request comes in: one instance; {counts}"
    assert re.search(rf"model {LINEAR} v1: \d+ us of CPU time per image at batch \d+: 1 instance\(s\)", server.log()), server.log()


def test_a_config_that_contradicts_its_model_makes_it_unavailable_with_every_difference(tmp_path, synthetic_repository, start_server):
    root = repository_with(tmp_path, {LINEAR: TUNED, "contradicting": CONTRADICTING,
                                      "unparsable": "max_batch_size: lots\n"}, synthetic_repository)
    server = start_server(root, wait=False, allow_unverified=True)
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError):
            if http("GET", f"{server.url}/v2/models/{LINEAR}/ready")[0] == 200:
                break
        assert time.monotonic() < deadline and server.proc.poll() is None, server.log(4000)
        time.sleep(0.2)
    index = {m["name"]: m for m in json.loads(http("POST", f"{server.url}/v2/repository/index", b"{}", {"Content-Type": "application/json"})[2])}
    assert index[LINEAR]["state"] == "READY"
    bad = index["contradicting"]
    assert bad["state"] == "UNAVAILABLE"
    for difference in ("name is 'another-name'", "platform is 'tensorrt_plan'", "data_type is TYPE_FP16", "dims are [3, 8, 8]",
                       "outputs are ['probabilities']"):
        assert difference in bad["reason"], bad["reason"]
    assert index["unparsable"]["state"] == "UNAVAILABLE" and "config.pbtxt" in index["unparsable"]["reason"]
    assert str(root) not in index["unparsable"]["reason"], "reasons name files relative to the model, not absolute paths"
    assert infer(server.url, LINEAR)[0] == 200 and infer(server.url, "contradicting")[0] == 503
    assert http("GET", server.url + "/v2/health/ready")[0] == 503, "not every model is ready"


def test_an_automatic_count_is_one_instance_for_a_model_faster_than_the_front_end_else_two(tmp_path):
    auto = scheduling(None, load_settings({"repository": tmp_path}))
    assert (auto.instances, auto.planned_instances) == (0, AUTO_MAX_INSTANCES), "unset: threads shared out for the most it may choose"
    cheap, costly = auto.with_auto_instances(ONE_INSTANCE_BELOW_S_PER_IMAGE * 0.7), auto.with_auto_instances(ONE_INSTANCE_BELOW_S_PER_IMAGE * 1.3)
    assert (cheap.instances, costly.instances) == (1, AUTO_MAX_INSTANCES)
    assert cheap.source["instances"] == "auto" and "1 instance(s) (auto)" in cheap.describe()
    assert auto.source["instances"] == "server", "the automatic choice is recorded as such only once made"


def test_config_pbtxt_is_read_as_triton_reads_it_and_the_server_settings_schedule_folders_without_one(tmp_path):
    from google.protobuf import text_format

    settings = load_settings({"repository": tmp_path, "max_batch_size": 8, "instances": 2, "max_queue_delay_ms": 5, "max_queue_size": 7,
                              "request_timeout_s": 3})
    tuned = scheduling(text_format.Parse(TUNED, model_config_pb2().ModelConfig()), settings)
    assert (tuned.max_batch_size, tuned.instances, tuned.max_queue_delay_s, tuned.preferred_batch_sizes) == (16, 3, 0.02, (4, 8))
    assert (tuned.max_queue_size, tuned.timeout_s, tuned.dynamic) == (500, 9.0, True)
    bare = scheduling(text_format.Parse('name: "m"', model_config_pb2().ModelConfig()), settings)
    assert (bare.max_batch_size, bare.instances, bare.dynamic) == (8, 2, False), "no dynamic_batching: Triton does not batch"
    # Triton: dynamic_batching {} waits 0, an absent or 0 max_queue_size is no limit, a 0 timeout none; the server's
    # --max-queue-delay-ms, --max-queue-size and --request-timeout-s are not read for a model with a config.pbtxt.
    for text in ('name: "m" dynamic_batching {}',
                 'name: "m" dynamic_batching { max_queue_delay_microseconds: 0 default_queue_policy { max_queue_size: 0 '
                 'default_timeout_microseconds: 0 } }'):
        empty = scheduling(text_format.Parse(text, model_config_pb2().ModelConfig()), settings)
        assert (empty.dynamic, empty.max_queue_delay_s, empty.max_queue_size, empty.timeout_s) == (True, 0.0, 0, None), text
        assert "delay 0 ms" in empty.describe() and "queue unbounded" in empty.describe() and "no timeout" in empty.describe()
    none = scheduling(None, settings)
    assert (none.dynamic, none.max_queue_delay_s, none.max_queue_size, none.timeout_s, none.max_batch_size) == (True, 0.005, 7, 3.0, 8)


def test_a_request_waits_the_config_pbtxt_queue_timeout_or_none_and_the_servers_timeout_without_config_pbtxt(tmp_path):
    """Triton: default_timeout_microseconds 0 or absent is no queue timeout; a request's own may shorten it where allowed."""
    from google.protobuf import text_format

    from elunet.serve.registry import ServedModel

    def served(config_text: str | None) -> ServedModel:
        config = text_format.Parse(config_text, model_config_pb2().ModelConfig()) if config_text is not None else None
        settings = load_settings({"repository": tmp_path, "request_timeout_s": 2.0})
        return ServedModel(None, None, config, scheduling(config, settings), fingerprint="")

    queue = 'name: "m" dynamic_batching { default_queue_policy { %s } }'
    assert (served(None).timeout(None), served(None).timeout(500_000)) == (2.0, 0.5), "no config.pbtxt: --request-timeout-s"
    for untimed in ('name: "m"', queue % "default_timeout_microseconds: 0 allow_timeout_override: true"):
        assert served(untimed).timeout(None) is None, untimed
        assert served(untimed).timeout(500_000) == 0.5, "a request may set one"
    timed = served(queue % "default_timeout_microseconds: 9000000 allow_timeout_override: true")
    assert (timed.timeout(None), timed.timeout(500_000)) == (9.0, 0.5)
    fixed = served(queue % "default_timeout_microseconds: 9000000")  # allow_timeout_override false: Triton's default
    assert fixed.timeout(500_000) == 9.0
