#!/usr/bin/env bash
# The main job on the embedded default: train the default model briefly on
# Fashion-MNIST. `make demo` runs this inside the project's virtual environment.
set -euo pipefail
RUN=${RUN:-runs/demo}
EPOCHS=${EPOCHS:-2}

# The server's HTTP port: PORT if given, else a free one the system picks. Checked before training,
# so that a taken port costs a second rather than the whole demo, and the classify step can only
# reach this demo's server, never another one that listens there.
PORT=$(python - "${PORT:-0}" <<'PY'
import socket, sys
with socket.socket() as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
    try:
        probe.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError as exc:
        sys.exit(f"demo: port {sys.argv[1]} on 127.0.0.1 is taken ({exc.strerror}): run it with PORT=<a free port>, or without PORT to use any free one")
    print(probe.getsockname()[1])
PY
)

elunet datasets
elunet train --epochs "$EPOCHS" --out "$RUN" --force

# Export: the trained model in both ELU modes into a Triton-layout model repository. Each export is
# checked (node counts, onnx.checker, shape inference) and verified against PyTorch on real test
# images and stress inputs; its parity figures are printed, and only a passing model is published.
REPO=${REPO:-$RUN/repository}
PLUGIN_NAME=${PLUGIN_NAME:-fashion-cnn-elu-plugin}
elunet export "$RUN" --repository "$REPO" --elu native --version 1 --force
elunet export "$RUN" --repository "$REPO" --elu plugin --name "$PLUGIN_NAME" --version 1 --force
elunet export "$RUN" --repository "$REPO" --elu plugin --dtype fp16 --name "$PLUGIN_NAME" --version 2 --force

# Serve: start the server on the demo repository, classify a real Fashion-MNIST
# test image through HTTP, stop the server cleanly (SIGTERM answers what is queued).
IMAGE="$RUN/fashion-mnist-test-0.png"
python - "$IMAGE" <<'PY'
import sys
from PIL import Image
from elunet.train.data import load_dataset
test = load_dataset("fashion-mnist", "test")
Image.fromarray(test.images[0, 0].numpy(), mode="L").save(sys.argv[1])
print(f"{sys.argv[1]}: Fashion-MNIST test image 0, true label {test.labels[int(test.targets[0])]!r}")
PY
# Serve the native-ELU export (the plugin exports run too: ONNX Runtime executes their ONNX function).
MODEL=$(python -c 'import sys; from elunet.repository import ModelRepository as R; r = R(sys.argv[1]); print(next(m for m in r.models() if r.get(m).card.export.elu_mode == "native"))' "$REPO")
# The demo classifies over HTTP: no gRPC port (--grpc-port 0), so that 8001 need not be free.
elunet serve --repository "$REPO" --models "$MODEL" --port "$PORT" --grpc-port 0 > "$RUN/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM "$SERVER" 2>/dev/null || true' EXIT
echo "elunet serve on http://127.0.0.1:$PORT (log: $RUN/serve.log); waiting until it is ready"
ready() { python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "http://127.0.0.1:$PORT/v2/health/ready" 2>/dev/null; }
for ((tries = 0; ; tries++)); do
  ready && break
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "demo: elunet serve stopped before it was ready; the end of $RUN/serve.log:" >&2
    tail -n 5 "$RUN/serve.log" >&2
    exit 1
  fi
  if ((tries >= 600)); then
    echo "demo: elunet serve was not ready after 5 minutes; see $RUN/serve.log" >&2
    exit 1
  fi
  sleep 0.5
done
elunet classify "$IMAGE" --model "$MODEL" --url "http://127.0.0.1:$PORT" --top-k 3
kill -TERM "$SERVER"
wait "$SERVER" || true   # uvicorn re-raises SIGTERM after its graceful shutdown
trap - EXIT
echo "server stopped (log: $RUN/serve.log)"
