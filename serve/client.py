"""A small standard-library client for the /v1 classify endpoint (used by `elunet classify`)."""

from __future__ import annotations

import json
import mimetypes
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from elunet.errors import ElunetError
from elunet.serve.settings import ServeSettings, env_name, option_name


def _option(field: str) -> str:
    """How to set a server setting: its option and its environment variable."""
    return f"{option_name(field)} (env {env_name(field)})"


def base_url(url: str) -> str:
    """The server address without a trailing slash; refused unless it is http(s)://HOST[:PORT]."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ElunetError(f"--url {url!r} is not an http:// or https:// address", hint=f"write it with the scheme, e.g. --url http://{url.split('://')[-1]}")
    return url.rstrip("/")


def error_hint(status: int, body_bytes: int) -> str:
    """What to do about an error status of the classify route, status by status."""
    if status == 401:
        return f"the server requires an API key: pass --api-key KEY or set {env_name('api_key')} (the key the server was started with)"
    if status == 413:
        limit = ServeSettings.model_fields["max_body_bytes"].default
        return (
            f"this request's body was {body_bytes} bytes, more than the server accepts (its {_option('max_body_bytes')}, "
            f"default {limit}): send fewer or smaller images per call, or start the server with a larger limit; pixel "
            "tensors sent to /v2/models/NAME/infer travel as bytes with the binary tensor extension (tritonclient's "
            "binary_data=True), not as JSON text"
        )
    if status == 415:
        return (
            "the classify route takes image files that Pillow decodes (PNG, JPEG, WebP, GIF, BMP, TIFF, ...), sent as "
            "multipart/form-data; the file the message names is none of them, or damaged"
        )
    if status == 404:
        return "check the model name: POST /v2/repository/index on the server lists the models it serves"
    return "see the server's log for this request"


def wait_until_ready(url: str, seconds: float) -> None:
    """Poll GET /v2/health/ready until it answers 200 (the server loads and warms up models first)."""
    url = base_url(url)
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"{exc.code} {exc.read().decode(errors='replace')}"
        except urllib.error.URLError as exc:
            last = str(exc.reason)
        time.sleep(0.25)
    raise ElunetError(f"{url} was not ready within {seconds:g} s (last answer: {last})", hint="check the server's log")


def classify_files(url: str, model: str, files: list[Path], top_k: int = 3, api_key: str | None = None, timeout: float = 30.0) -> list[dict]:
    url = base_url(url)
    boundary = uuid.uuid4().hex
    parts = []
    for path in files:
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{path.name}"\r\n'
            f"Content-Type: {kind}\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
        )
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n{top_k}\r\n--{boundary}--\r\n'.encode())
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    body = b"".join(parts)
    request = urllib.request.Request(f"{url}/v1/models/{model}/classify", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)["predictions"]
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise ElunetError(f"server answered {exc.code}: {detail}", hint=error_hint(exc.code, len(body))) from None
    except urllib.error.URLError as exc:
        raise ElunetError(f"cannot reach {url}: {exc.reason}", hint="start the server with `elunet serve --repository DIR`") from None
