#!/usr/bin/env bash
# Every GPU check of the project, in one call, on a bare CUDA machine with
# PyTorch (CUDA build) and no TensorRT. Prints the figures; < 8 minutes.
#
#   bash scripts/gpu_check.sh            # from the repository root
#
# It installs nothing into the machine's Python: elunet is made importable
# through a throw-away folder of symlinks on PYTHONPATH (the package maps its
# stages from the repository root). pytest is the one extra it needs; when
# missing it is installed from $WHEELHOUSE (a folder of wheels carried along,
# e.g. made with `pip download pytest -d .gpu-wheels`) or else from the index.
#
# Exit status: 0 when every check ran and passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-$ROOT/.gpu-wheels}
STATUS=0
section() { printf '\n==== %s ====\n' "$*"; }
fail() { echo "FAILED: $*"; STATUS=1; }

section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi not available"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "PyTorch with CUDA is not usable by $PY: nothing to check"
  exit 1
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU", torch.cuda.get_device_name())'
echo "nvcc: $(command -v nvcc || echo 'not found (the NVRTC loader covers the kernel)')"

section "python environment"
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
mkdir "$SITE/elunet"
for f in "$ROOT"/elunet/*; do ln -s "$f" "$SITE/elunet/"; done
for stage in train export serve plugins; do ln -s "$ROOT/$stage" "$SITE/elunet/$stage"; done
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# Work from outside the checkout: Python puts the working directory first on
# sys.path, and the checkout's own elunet/ folder lacks the stage subpackages.
cd "$SITE"
"$PY" -c 'import elunet.plugins.kernel_loader' || fail "elunet.plugins does not import"
if ! "$PY" -c 'import pytest' 2>/dev/null; then
  if [ -d "$WHEELHOUSE" ]; then
    "$PY" -m pip install -q --no-index --find-links "$WHEELHOUSE" pytest || true
  else
    timeout 120 "$PY" -m pip install -q pytest || true
  fi
fi
"$PY" -c 'import pytest; print("pytest", pytest.__version__)' || fail "pytest is missing and could not be installed"

section "ELU kernel vs torch.nn.functional.elu (nvcc and NVRTC loaders)"
# --noconftest: the other stages' fixtures need packages this machine lacks.
timeout 300 "$PY" -m pytest -q -rs --noconftest -p no:cacheprovider -o addopts= "$ROOT/tests/test_plugins_kernel_gpu.py" \
  || fail "kernel test"

section "ELU kernel bandwidth vs device-to-device copy (2^28 elements)"
timeout 180 "$PY" "$ROOT/benchmarks/elu_kernel_bandwidth.py" --log2-elements 28 --repeats 20 || fail "bandwidth below target or not measured"

# ==== SERVING: torch-CUDA backend check (added by the serving stage) ====
section "serving: torch backend on CUDA (parity vs the CPU reference, served throughput)"
SERVE_DEPS="fastapi uvicorn pydantic prometheus-client pillow python-multipart typer safetensors tritonclient grpcio protobuf"
if ! "$PY" -c 'import fastapi, uvicorn, pydantic, prometheus_client, PIL, multipart, typer, safetensors, tritonclient.grpc' 2>/dev/null && [ -d "$WHEELHOUSE" ]; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELHOUSE" $SERVE_DEPS || true
fi
if "$PY" -c 'import fastapi, uvicorn, pydantic, prometheus_client, PIL, multipart, typer, safetensors, tritonclient.grpc' 2>/dev/null; then
  timeout 360 "$PY" "$ROOT/benchmarks/serve_gpu_check.py" --duration 8 || fail "serving: torch-CUDA parity or throughput"
else
  fail "serving: needs $SERVE_DEPS (carry wheels: pip download -d .gpu-wheels $SERVE_DEPS)"
fi
# ==== end SERVING ====

section "result"
if [ "$STATUS" = 0 ]; then echo "all GPU checks passed"; else echo "some GPU checks failed (see above)"; fi
exit "$STATUS"
