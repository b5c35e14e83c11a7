#!/bin/sh
# Installs the lean server into the Python environment first on PATH: what the Dockerfile's `serve`
# stage runs, and what tests/test_deploy_serve_install.py runs in a fresh virtualenv here.
#
#   install-serve.sh WHEEL EXTRAS ORT_PACKAGE
#
# WHEEL: elunet's wheel; EXTRAS: serve, or serve,tensorrt; ORT_PACKAGE: onnxruntime-gpu (CUDA and
# CPU execution providers) or onnxruntime (CPU only). pip honours PIP_CONSTRAINT (the TensorRT
# images pin the TensorRT their plugin was compiled against). Fails, rather than producing an image
# that fails later, when ONNX Runtime lacks the CUDA provider asked for or PyTorch got installed.
set -eu
wheel=$1
extras=$2
ort_package=$3
# The versions CI tested (scripts/serve_lock.py), beside this script.
lock=$(dirname "$0")/serve.lock

pip install -c "$lock" "$wheel[$extras]"
# The serve extra brings the CPU build `onnxruntime`; the GPU build installs the same Python module,
# so it must replace the CPU build, not join it.
if [ "$ort_package" != onnxruntime ]; then
    pip uninstall -y onnxruntime
    pip install "$ort_package"
fi

python - "$ort_package" <<'PY'
import sys

import onnxruntime

providers = onnxruntime.get_available_providers()
print(f"onnxruntime {onnxruntime.__version__}: {', '.join(providers)}")
if sys.argv[1] != "onnxruntime" and "CUDAExecutionProvider" not in providers:
    sys.exit(f"{sys.argv[1]} was installed but ONNX Runtime has no CUDAExecutionProvider")
try:
    import torch  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    sys.exit("torch is installed: the serving image must stay without PyTorch")
PY
elunet serve --help >/dev/null
