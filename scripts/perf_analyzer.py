"""Run Triton's perf_analyzer (tritonclient's Linux wheel, 2.41) against elunet, installing it on first use.

    python scripts/perf_analyzer.py --install          # fetch it into the cache and check it starts
    python scripts/perf_analyzer.py -- -m MODEL -u 127.0.0.1:8000 ...   # perf_analyzer's own options after --
    python scripts/perf_analyzer.py --image-data OUT.json PHOTO.jpg ...  # --input-data for an image model

perf_analyzer left tritonclient's wheel after 2.41. The binary needs Debian's libb64-0d and libcudart.so.12
even on CPU; the CUDA runtime comes from its PyPI wheel, put beside the binary (LD_LIBRARY_PATH). Both wheels
are fetched with pip (`pip download`, PyPI) and unpacked into ~/.cache/elunet-test/perf_analyzer/<versions>.
Exit codes of its own: UNREACHABLE when PyPI cannot be reached, MISSING_LIBRARY when a system library is
missing (the message says which package to install); otherwise perf_analyzer's own exit code.

perf_analyzer sends the bytes a ``b64`` value decodes to as the tensor's data in its binary form, unchanged: for
a BYTES input that form is each element's 4-byte little-endian length, then its bytes. So an image model's
input data is not the file in base64 but the file with its length in front (``image_input_data``); a bare
JPEG's first four bytes would be read as a length, and refused.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# The last tritonclient release whose wheel carries perf_analyzer, and a CUDA 12 runtime for its libcudart.so.12.
TRITONCLIENT = "tritonclient==2.41.1"
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12==12.9.79"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "elunet-test" / "perf_analyzer"
FOLDER = CACHE / f"{TRITONCLIENT}+{CUDA_RUNTIME}".replace("==", "-")
BINARY, CUDART = FOLDER / "perf_analyzer", FOLDER / "libcudart.so.12"
# Debian's package for each system library the binary links to that a bare Debian lacks.
SYSTEM_LIBRARIES = {"libb64.so.0d": "libb64-0d"}
UNREACHABLE, MISSING_LIBRARY = 75, 76


class Unavailable(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def install() -> Path:
    """The binary, fetched and unpacked on first use; Unavailable when it cannot be, or cannot start here."""
    if not (BINARY.exists() and CUDART.exists()):
        FOLDER.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=FOLDER) as download:
            fetched = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--platform", "manylinux1_x86_64",
                 "--platform", "manylinux2014_x86_64", "--dest", download, TRITONCLIENT, CUDA_RUNTIME],
                capture_output=True, text=True, timeout=600,
            )
            if fetched.returncode != 0:
                raise Unavailable(f"pip could not download {TRITONCLIENT} and {CUDA_RUNTIME} from PyPI:\n{fetched.stderr[-2000:]}", UNREACHABLE)
            for wheel in Path(download).glob("*.whl"):
                with zipfile.ZipFile(wheel) as archive:
                    for member in archive.namelist():
                        target = {"perf_analyzer": BINARY, "libcudart.so.12": CUDART}.get(member.rsplit("/", 1)[-1])
                        if target is not None and ("/bin/" in member or "/lib/" in member):
                            partial = target.with_suffix(".partial")
                            partial.write_bytes(archive.read(member))
                            partial.chmod(0o755)
                            partial.replace(target)  # whole or absent, for a concurrent run
    missing = _missing_libraries()
    if missing:
        packages = sorted({SYSTEM_LIBRARIES.get(lib, lib) for lib in missing})
        raise Unavailable(f"perf_analyzer needs {', '.join(missing)}: apt-get install {' '.join(packages)} (make test installs it)",
                          MISSING_LIBRARY)
    return BINARY


def environment() -> dict[str, str]:
    """The environment perf_analyzer runs in: this one, with the CUDA runtime's folder on LD_LIBRARY_PATH."""
    paths = [str(FOLDER), *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]
    return {**os.environ, "LD_LIBRARY_PATH": ":".join(paths)}


def _missing_libraries() -> list[str]:
    linked = subprocess.run(["ldd", str(BINARY)], capture_output=True, text=True, env=environment())
    return [line.split()[0] for line in linked.stdout.splitlines() if "not found" in line]


def image_input_data(images: list[bytes], input_name: str) -> dict:
    """perf_analyzer's --input-data for an image model's ``input_name``: each image file one request's element."""
    import numpy as np

    from elunet.serve.extensions import serialize_bytes

    return {"data": [{input_name: {"b64": base64.b64encode(serialize_bytes(np.array([image], dtype=object))).decode()}} for image in images]}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--image-data"]:
        from elunet.contracts import IMAGE_INPUT_NAME

        out, *files = argv[1:]
        Path(out).write_text(json.dumps(image_input_data([Path(f).read_bytes() for f in files], IMAGE_INPUT_NAME)))
        return 0
    try:
        binary = install()
    except Unavailable as exc:
        print(exc, file=sys.stderr)
        return exc.code
    if argv[:1] == ["--install"]:
        print(binary)
        return 0
    args = argv[1:] if argv[:1] == ["--"] else argv
    os.execve(binary, [str(binary), *args], environment())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
