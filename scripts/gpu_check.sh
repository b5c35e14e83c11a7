#!/usr/bin/env bash
# Every GPU check of the project in one command, for the lent GPU machine: its image has PyTorch (CUDA
# build), numpy, onnxruntime (CPU) and nvcc, and it has no network. Under 10 minutes.
#
#   make gpu-wheels              # beforehand, where there is network: the other wheels into .whl/
#   bash scripts/gpu_check.sh    # on the GPU machine, from the repository root (.whl/ carried along)
#
# 1. installs .whl/*.whl offline (--no-index --no-deps) into a throw-away folder on PYTHONPATH, and makes
#    elunet importable through symlinks (the package maps its stages from the repository root);
# 2. imports every carried distribution's modules, every module of the serve stage and the modules the
#    checks import, and starts `elunet serve --help`: a missing wheel ends the run here, before GPU time;
# 3. the GPU sections: the ELU kernel against torch.nn.functional.elu (nvcc and NVRTC loaders), its
#    bandwidth against a device-to-device copy, and the torch backend served on CUDA (parity with the
#    CPU reference, throughput). Each one skips, saying why, without an NVIDIA GPU that PyTorch can use.
#
# PYTHON picks the interpreter (default python3); WHEELS the wheel folder (default .whl).
# Exit status: 0 every section ran and passed; 3 nothing failed but GPU sections were skipped; 1 a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-$ROOT/.whl}
FAILED=0
SKIPPED=0
section() { printf '\n==== %s ====\n' "$*"; }
fail() { echo "FAILED: $*"; FAILED=1; }
skip() { echo "SKIPPED: $*"; SKIPPED=1; }

section "machine"
echo "python: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
GPU_REASON=""
if ! command -v nvidia-smi >/dev/null; then
  GPU_REASON="no NVIDIA GPU: nvidia-smi is not installed"
elif ! nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; then
  GPU_REASON="no NVIDIA GPU: nvidia-smi lists none"
fi
echo "nvcc: $(command -v nvcc || echo 'not found (the NVRTC loader covers the kernel)')"

section "install the carried wheels (offline)"
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
if [ ${#wheels[@]} = 0 ]; then
  fail "no wheels in $WHEELS: run \`make gpu-wheels\` where there is network, and carry .whl/ along"
elif "$PY" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --target "$SITE/wheels" "${wheels[@]}"; then
  echo "${#wheels[@]} wheels from $WHEELS ($(du -sh "$WHEELS" | cut -f1)) installed into $SITE/wheels"
else
  fail "pip could not install the wheels of $WHEELS (made for this Python? see above; \`make gpu-wheels GPU_PYTHON_VERSION=X.Y\`)"
fi
mkdir "$SITE/elunet-src" "$SITE/elunet-src/elunet"
for f in "$ROOT"/elunet/*; do ln -s "$f" "$SITE/elunet-src/elunet/"; done
for stage in train export serve plugins; do ln -s "$ROOT/$stage" "$SITE/elunet-src/elunet/$stage"; done
export PYTHONPATH="$SITE/elunet-src:$SITE/wheels${PYTHONPATH:+:$PYTHONPATH}"
# From outside the checkout: Python puts the working directory first on sys.path, and the checkout's own
# elunet/ folder lacks the stage subpackages. Checks that start servers inherit this folder and PYTHONPATH.
cd "$SITE"

section "imports"
# Each carried distribution's module (the one named like it, else every top-level module its RECORD
# lists: nothing is listed by hand; uvicorn, for one, imports httptools and uvloop only when serving),
# the serve stage's modules, and what the checks below import beyond the image's PyTorch.
"$PY" - "$ROOT" "$SITE/wheels" <<'EOF' || fail "imports (see above): the server or a check would exit on import"
import importlib, pathlib, re, sys
root, site = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
modules = set()
for record in site.glob("*.dist-info/RECORD"):
    tops = set()
    for line in record.read_text().splitlines():
        top = line.split(",")[0].split("/")[0]
        if top.endswith((".dist-info", ".data")) or top.startswith(("_", "..")) or top in ("bin", "include", "share"):
            continue
        if top.endswith(".py"):
            tops.add(top[:-3])
        elif "." not in top or top.endswith(".so"):
            tops.add(top.split(".")[0])
    distribution = re.sub(r"[-_.]+", "_", record.parent.name.split("-")[0]).lower()
    modules |= {distribution} if distribution in {t.lower() for t in tops} else tops
modules |= {f"elunet.serve.{p.stem}" for p in (root / "serve").glob("*.py") if p.stem != "__main__"}
modules |= {"elunet.cli", "elunet.runtime.onnxruntime_engine", "elunet.plugins.kernel_loader", "elunet.export.parity",
            "onnxruntime", "numpy"}
failed = []
for name in sorted(modules):
    try:
        importlib.import_module(name)
    except Exception as exc:  # any failure to import is what this section exists to find
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print(f"{len(modules) - len(failed)} of {len(modules)} modules import")
for line in failed:
    print("  cannot import", line)
sys.exit(1 if failed else 0)
EOF
"$PY" -m elunet serve --help >/dev/null || fail "\`elunet serve --help\` does not start"

TORCH_REASON=$("$PY" -c '
try:
    import torch
except Exception as exc:
    print(f"PyTorch is not importable by this Python ({exc}); the GPU image provides it")
else:
    if not torch.cuda.is_available():
        print(f"PyTorch {torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda})")
' 2>&1)
REASON=${GPU_REASON:-$TORCH_REASON}
if [ -z "$REASON" ]; then
  "$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU", torch.cuda.get_device_name())'
  "$PY" -c 'import elunet.train.checkpoint, elunet.train.models, elunet.train.data' \
    || fail "the torch serving check's imports (elunet.train)"
fi

section "ELU kernel vs torch.nn.functional.elu (nvcc and NVRTC loaders)"
if [ -n "$REASON" ]; then
  skip "$REASON"
else
  # --noconftest: the other stages' fixtures need packages this machine does not carry.
  timeout 180 "$PY" -m pytest -q -rs --noconftest -p no:cacheprovider -o addopts= "$ROOT/tests/test_plugins_kernel_gpu.py" \
    || fail "kernel test"
fi

section "ELU kernel bandwidth vs device-to-device copy (2^28 elements)"
if [ -n "$REASON" ]; then
  skip "$REASON"
else
  timeout 120 "$PY" "$ROOT/benchmarks/elu_kernel_bandwidth.py" --log2-elements 28 --repeats 20 --json "${OUT:-$ROOT/docs/benchmarks}/elu_kernel_bandwidth.json" \
    || fail "bandwidth below target or not measured"
fi

section "serving: torch backend on CUDA (parity vs the CPU reference, served throughput)"
if [ -n "$REASON" ]; then
  skip "$REASON"
else
  timeout 240 "$PY" "$ROOT/benchmarks/serve_gpu_check.py" --duration 8 --json "${OUT:-$ROOT/docs/benchmarks}/serve_gpu_check.json" || fail "serving: torch-CUDA parity or throughput"
fi

section "result"
if [ "$FAILED" = 1 ]; then
  echo "some checks failed (see above)"
  exit 1
elif [ "$SKIPPED" = 1 ]; then
  echo "nothing failed; the GPU sections were skipped: $REASON"
  exit 3
fi
echo "all GPU checks passed"
