"""A small standard-library client for the /v1 classify endpoint (used by `elunet classify`)."""

from __future__ import annotations

import json
import mimetypes
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from elunet.errors import ElunetError


def wait_until_ready(url: str, seconds: float) -> None:
    """Poll GET /v2/health/ready until it answers 200 (the server loads and warms up models first)."""
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/v2/health/ready", timeout=5) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"{exc.code} {exc.read().decode(errors='replace')}"
        except urllib.error.URLError as exc:
            last = str(exc.reason)
        time.sleep(0.25)
    raise ElunetError(f"{url} was not ready within {seconds:g} s (last answer: {last})", hint="check the server's log")


def classify_files(url: str, model: str, files: list[Path], top_k: int = 3, api_key: str | None = None, timeout: float = 30.0) -> list[dict]:
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
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/models/{model}/classify", data=b"".join(parts), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)["predictions"]
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise ElunetError(f"server answered {exc.code}: {detail}", hint="check the model name with GET /v2/models/NAME") from None
    except urllib.error.URLError as exc:
        raise ElunetError(f"cannot reach {url}: {exc.reason}", hint="start the server with `elunet serve --repository DIR`") from None
