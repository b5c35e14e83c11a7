"""Open-loop-ish HTTP load from wrk (a separate C process), for the serving benchmarks.

wrk keeps ``connections`` requests in flight over keep-alive connections for
``duration_s`` and reports requests/s and latency percentiles. Its Lua script
POSTs one fixed body; the body and headers are written to a temporary file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

WRK_HINT = "the benchmark drives the server with wrk: apt-get install wrk"

_SCRIPT = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
{headers}
done = function(summary, latency, requests)
  io.write(string.format("ELUNET requests=%d errors=%d duration_us=%d p50_us=%d p99_us=%d\\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int

    def cells(self) -> str:
        return f"{self.requests_per_s:>9.0f} rps  p50 {self.p50_ms:>7.1f} ms  p99 {self.p99_ms:>7.1f} ms  errors {self.errors}"


def wrk(url: str, body: bytes, headers: dict[str, str], *, connections: int = 64, duration_s: float = 10, threads: int = 1) -> WrkResult:
    if shutil.which("wrk") is None:
        raise SystemExit(WRK_HINT)
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(body)
        lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
        script = Path(tmp) / "post.lua"
        script.write_text(_SCRIPT.format(body=body_file, headers=lines))
        done = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", "30s", "-s", str(script), url],
            capture_output=True, text=True, timeout=duration_s + 60,
        )
    m = re.search(r"ELUNET requests=(\d+) errors=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+)", done.stdout)
    if not m:
        raise RuntimeError(f"wrk gave no summary:\n{done.stdout}\n{done.stderr}")
    requests, errors, duration, p50, p99 = map(int, m.groups())
    return WrkResult(requests / (duration / 1e6), p50 / 1000, p99 / 1000, errors)
