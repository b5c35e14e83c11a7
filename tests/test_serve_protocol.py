"""The V2 protocol and every error row, against a real `elunet serve` process on a synthetic repository."""

from __future__ import annotations

from http.client import HTTPConnection
import json
import numpy as np
import pytest
from fixtures_serve import FAULTY, LINEAR, SYNTHETIC_SHAPE, binary_infer_body, http, parse_infer_response

from elunet.contracts import INPUT_NAME

pytestmark = pytest.mark.slow

RNG = np.random.default_rng(0)


def pixels(n: int) -> np.ndarray:
    return RNG.random((n, *SYNTHETIC_SHAPE), dtype=np.float32)


def json_infer(url, model, x, datatype="FP32", name=INPUT_NAME, shape=None, headers=None, **extra):
    body = {"inputs": [{"name": name, "shape": list(shape or x.shape), "datatype": datatype, "data": x.ravel().tolist()}], **extra}
    return http("POST", f"{url}/v2/models/{model}/infer", json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})})


def error_of(body: bytes) -> str:
    parsed = json.loads(body)
    assert set(parsed) == {"error"}, parsed
    return parsed["error"]


def test_server_metadata_health_and_model_metadata(synthetic_server):
    url = synthetic_server.url
    assert http("GET", url + "/v2/health/live")[0] == 200
    assert http("GET", url + "/v2/health/ready")[0] == 200
    status, meta = synthetic_server.get_json("/v2")
    assert status == 200 and meta["name"] == "elunet" and "binary_tensor_data" in meta["extensions"]
    status, meta = synthetic_server.get_json(f"/v2/models/{LINEAR}")
    assert status == 200
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, *SYNTHETIC_SHAPE]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert synthetic_server.get_json(f"/v2/models/{LINEAR}/versions/1")[0] == 200
    assert synthetic_server.get_json(f"/v2/models/{LINEAR}/versions/1/ready")[0] == 200
    status, index = json.loads(http("POST", url + "/v2/repository/index")[2]), None
    assert {m["name"] for m in status} == {LINEAR, FAULTY}


def test_json_binary_and_uint8_fp16_requests_agree(synthetic_server):
    url = synthetic_server.url
    x = (RNG.integers(0, 256, size=(3, *SYNTHETIC_SHAPE))).astype(np.uint8)
    as_float = x.astype(np.float32) / 255
    status, headers, body = json_infer(url, LINEAR, as_float)
    assert status == 200, body
    reference = parse_infer_response(headers, body)
    assert json.loads(body)["outputs"][0]["shape"] == [3, 10]
    for tensor, datatype, tol in ((x, "UINT8", 1e-5), (as_float.astype(np.float16), "FP16", 2e-2), (as_float, "FP32", 0)):
        body, hdrs = binary_infer_body(tensor, datatype)
        status, headers, out = http("POST", f"{url}/v2/models/{LINEAR}/infer", body, hdrs)
        assert status == 200, out
        assert headers["Content-Type"] == "application/octet-stream"
        np.testing.assert_allclose(parse_infer_response(headers, out), reference, atol=tol, rtol=tol)
    status, headers, out = json_infer(url, LINEAR, x, datatype="UINT8")
    np.testing.assert_allclose(parse_infer_response(headers, out), reference, atol=1e-5)


def test_request_id_is_echoed_and_binary_output_can_be_asked_per_output(synthetic_server):
    x = pixels(2)
    status, headers, body = json_infer(synthetic_server.url, LINEAR, x, id="req-42", outputs=[{"name": "logits", "parameters": {"binary_data": True}}])
    assert status == 200
    n = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:n])
    assert head["id"] == "req-42" and head["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4


@pytest.mark.parametrize(
    "case, expect_status, expect_text",
    [
        (dict(name="images"), 400, "expected exactly one input named 'input', received inputs ['images']"),
        (dict(shape=[1, 3, 8, 8]), 400, "expected [-1, 1, 8, 8]"),
        (dict(datatype="INT64"), 400, "has datatype INT64; expected one of FP32, FP16, UINT8"),
        (dict(shape=[2, 1, 8, 8]), 400, "has 64 values; shape [2, 1, 8, 8] needs 128"),
    ],
)
def test_wrong_input_name_shape_datatype_are_400_saying_expected_and_received(synthetic_server, case, expect_status, expect_text):
    status, _, body = json_infer(synthetic_server.url, LINEAR, pixels(1), **case)
    assert status == expect_status
    assert expect_text in error_of(body)


def test_malformed_bodies_are_400(synthetic_server):
    url = f"{synthetic_server.url}/v2/models/{LINEAR}/infer"
    assert http("POST", url, b"{not json")[0] == 400
    assert http("POST", url, b'{"inputs": []}')[0] == 400
    body, headers = binary_infer_body(pixels(1))
    status, _, out = http("POST", url, body[:-4], headers)
    assert status == 400 and "binary" in error_of(out)
    status, _, out = http("POST", url, body, {**headers, "Inference-Header-Content-Length": "999999"})
    assert status == 400 and "Inference-Header-Content-Length" in error_of(out)
    status, _, out = json_infer(synthetic_server.url, LINEAR, pixels(1), outputs=[{"name": "probabilities"}])
    assert status == 400 and "logits" in error_of(out)


def test_unknown_model_or_version_is_404_and_bad_names_never_reach_the_disk(synthetic_server):
    url = synthetic_server.url
    status, _, body = http("GET", f"{url}/v2/models/resnet50")
    assert status == 404 and LINEAR in error_of(body)
    assert http("GET", f"{url}/v2/models/{LINEAR}/versions/7")[0] == 404
    assert http("GET", f"{url}/v2/models/{LINEAR}/versions/latest")[0] == 404
    assert json_infer(url, "nope", pixels(1))[0] == 404
    for name in ("..%2F..%2Fetc", ".hidden", "a..b"):
        status, _, body = http("GET", f"{url}/v2/models/{name}")
        assert status in (400, 404), (name, status)
        assert "error" in json.loads(body)


def test_body_over_the_limit_is_413_with_content_length_or_chunked(synthetic_server):
    big = b"0" * ((1 << 20) + 1)
    status, _, body = http("POST", f"{synthetic_server.url}/v2/models/{LINEAR}/infer", big)
    assert status == 413 and "limit" in error_of(body)
    conn = HTTPConnection("127.0.0.1", synthetic_server.port, timeout=30)
    conn.putrequest("POST", f"/v2/models/{LINEAR}/infer")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b"0" * 65536
    try:
        for _ in range(20):
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before the client finished sending
    assert conn.getresponse().status == 413
    conn.close()


def test_backend_failure_fails_that_batch_only_and_the_server_stays_ready(synthetic_server):
    url = synthetic_server.url
    poisoned = pixels(1)
    poisoned[0, 0, 0, 0] = 1.0  # makes the faulty model's Gather index out of range inside ONNX Runtime
    status, _, body = json_infer(url, FAULTY, poisoned)
    assert status == 500 and "engine failed" in error_of(body)
    assert http("GET", url + "/v2/health/ready")[0] == 200
    fine = pixels(1)
    fine[0, 0, 0, 0] = 0.1
    assert json_infer(url, FAULTY, fine)[0] == 200
    metrics = http("GET", url + "/metrics")[2].decode()
    assert f'nv_inference_request_failure{{model="{FAULTY}",reason="BACKEND",version="1"}} 1\n' in metrics


def test_metrics_report_success_durations_batch_sizes_and_queue_depth(synthetic_server):
    json_infer(synthetic_server.url, LINEAR, pixels(2))
    text = http("GET", synthetic_server.url + "/metrics")[2].decode()
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "elunet_inference_batch_size_bucket",
        "nv_inference_pending_request_count",
    ):
        assert f'{name}{{' in text, name


def test_access_log_lines_are_structured_json(synthetic_server):
    http("GET", synthetic_server.url + "/v2/health/live")
    lines = [json.loads(line) for line in synthetic_server.log().splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry["logger"] == "elunet.serve.access"]
    assert access and {"method", "path", "status", "duration_ms", "client"} <= set(access[-1])


def test_an_access_line_is_the_same_json_through_the_server_handler_as_through_logging(monkeypatch):
    """The server's handler gets access lines formatted without a LogRecord; any other logging setup gets the
    record. Both must write the same line (but its time), a path that orjson cannot encode included."""
    import io
    import logging

    from elunet.serve import logs

    def written(setup) -> list[dict]:
        stream = io.StringIO()
        handler = logs.TurnBufferedHandler(stream)
        handler.setFormatter(logs.JsonFormatter())
        setup(handler)
        for path in ("/v2/models/m/infer", "/v2/\udcff"):
            logs.access_line("POST", path, 200, "127.0.0.1:5", 330, 1.5)
        handler.flush()
        return [{k: v for k, v in json.loads(line).items() if k != "ts"} for line in stream.getvalue().splitlines()]

    elunet_logger, access = logging.getLogger("elunet"), logging.getLogger(logs.ACCESS_LOGGER)
    monkeypatch.setattr(elunet_logger, "handlers", [])
    monkeypatch.setattr(elunet_logger, "propagate", False)
    monkeypatch.setattr(elunet_logger, "level", logging.INFO)
    monkeypatch.setattr(access, "handlers", [])

    def as_server(handler):
        monkeypatch.setattr(logs, "_server_handler", handler)
        elunet_logger.handlers = [handler]

    def as_other(handler):
        monkeypatch.setattr(logs, "_server_handler", None)
        access.handlers = [handler]

    fast, record = written(as_server), written(as_other)
    assert fast == record and len(fast) == 2
    assert fast[0] == {"level": "info", "logger": logs.ACCESS_LOGGER, "msg": "POST /v2/models/m/infer 200", "client": "127.0.0.1:5",
                       "method": "POST", "path": "/v2/models/m/infer", "status": 200, "bytes_sent": 330, "duration_ms": 1.5}
    logging.getLogger(logs.ACCESS_LOGGER).setLevel(logging.WARNING)
    try:
        assert written(as_server) == []  # --log-level warning: no access lines
    finally:
        logging.getLogger(logs.ACCESS_LOGGER).setLevel(logging.NOTSET)


def test_log_timestamps_are_iso_utc_to_the_millisecond():
    from elunet.serve.logs import timestamp

    assert timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert timestamp(1796349672.9996) == "2026-12-04T02:01:12.999Z"  # truncated, as logging's msecs
    assert timestamp(1796349673.25) == "2026-12-04T02:01:13.250Z"  # the next second, not the cached one


@pytest.mark.parametrize("version", ["%C2%B2", "%E2%91%A0", "9" * 4400, "-1", "1.0"])
def test_versions_that_are_digits_only_to_unicode_or_too_long_are_404(synthetic_server, version):
    for path in (f"/v2/models/{LINEAR}/versions/{version}", f"/v2/models/{LINEAR}/versions/{version}/stats",
                 f"/v2/models/{LINEAR}/versions/{version}/config", f"/v2/models/{LINEAR}/versions/{version}/ready"):
        status, _, body = http("GET", synthetic_server.url + path)
        assert status == 404 and "has no version" in json.loads(body)["error"], (path, status, body[:200])
