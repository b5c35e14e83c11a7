"""Serve settings: one module, env vars derived from field names, clear errors."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from elunet.errors import ElunetError
from elunet.serve.settings import ServeSettings, load_settings


def test_priority_is_option_then_environment_then_file_then_default(tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text('repository = "/file"\nport = 9001\nmax_batch_size = 4\ninstances = 3\n')
    env = {"ELUNET_PORT": "9002", "ELUNET_MAX_BATCH_SIZE": "16"}
    s = load_settings({"max_batch_size": 64, "host": None}, config_file=config, environ=env)
    assert (s.max_batch_size, s.port, s.instances, str(s.repository), s.host) == (64, 9002, 3, "/file", "127.0.0.1")
    s = load_settings(environ={"ELUNET_CONFIG": str(config), "ELUNET_API_KEY": "s3cr3t-key"})
    assert s.port == 9001 and s.api_key.get_secret_value() == "s3cr3t-key"
    assert "s3cr3t-key" not in repr(s), "the API key must not leak into logs"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ELUNET_PORT": "eighty"}, "ELUNET_PORT"),
        ({"ELUNET_DEVICE": "gpu"}, "cpu, cuda or cuda:N"),
        ({"ELUNET_BACKEND": "tflite"}, "ELUNET_BACKEND"),
        ({"ELUNET_MAX_BATCH_SIZE": "0"}, "greater than or equal to 1"),
    ],
)
def test_invalid_values_name_the_setting_and_what_is_expected(env, message):
    with pytest.raises(ElunetError) as err:
        load_settings({"repository": "/r"}, environ=env)
    assert message in err.value.message


def test_missing_repository_and_bad_files_are_explained(tmp_path):
    with pytest.raises(ElunetError, match="no model repository"):
        load_settings(environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("max_batch = 3\n")
    with pytest.raises(ElunetError, match="unknown keys"):
        load_settings({"repository": "/r"}, config_file=bad, environ={})


def test_defaults():
    s = ServeSettings(repository="/r")
    assert (s.port, s.backend, s.device, s.api_key) == (8000, "auto", None, None)


def test_serve_command_fails_cleanly_on_an_empty_repository(tmp_path):
    r = subprocess.run([sys.executable, "-m", "elunet", "serve", "--repository", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "holds no model versions" in r.stderr and "Traceback" not in r.stderr


def test_models_setting_takes_comma_separated_names_from_anywhere(tmp_path):
    assert load_settings({"repository": "/r"}, environ={"ELUNET_MODELS": "a, b"}).models == ["a", "b"]
    assert load_settings({"repository": "/r", "models": "c"}, environ={}).models == ["c"]
    assert load_settings({"repository": "/r"}, environ={}).models is None


def test_serving_a_model_the_repository_lacks_fails_cleanly(synthetic_repository):
    r = subprocess.run(
        [sys.executable, "-m", "elunet", "serve", "--repository", str(synthetic_repository), "--models", "synthetic-linear,resnet"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2 and "['resnet']" in r.stderr and "synthetic-linear" in r.stderr


@pytest.mark.parametrize("taken", ["--port", "--grpc-port"])
def test_a_taken_port_is_one_plain_error_before_any_model_loads(synthetic_repository, taken):
    from fixtures_serve import free_port

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        ports = {"--port": str(free_port()), "--grpc-port": str(free_port()), taken: str(busy)}
        r = subprocess.run(
            [sys.executable, "-m", "elunet", "serve", "--repository", str(synthetic_repository), "--allow-unverified", "true",
             "--host", "127.0.0.1", *[w for kv in ports.items() for w in kv]],
            capture_output=True, text=True, timeout=60,
        )
    assert r.returncode == 2, r.stderr
    error, hint = r.stderr.strip().splitlines()  # no log records: nothing was loaded
    assert error == f"error: cannot listen on 127.0.0.1:{busy} ({taken}): Address already in use"
    assert f"{taken} N" in hint
