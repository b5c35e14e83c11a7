#!/usr/bin/env bash
# The main job on the embedded default: train the default model briefly on
# Fashion-MNIST. `make demo` runs this inside the project's virtual environment.
set -euo pipefail
RUN=${RUN:-runs/demo}
EPOCHS=${EPOCHS:-2}

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
PORT=${PORT:-8000}
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
elunet serve --repository "$REPO" --models "$MODEL" --port "$PORT" > "$RUN/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM "$SERVER" 2>/dev/null || true' EXIT
elunet classify "$IMAGE" --model "$MODEL" --url "http://127.0.0.1:$PORT" --top-k 3 --wait 120
kill -TERM "$SERVER"
wait "$SERVER" || true   # uvicorn re-raises SIGTERM after its graceful shutdown
trap - EXIT
echo "server stopped (log: $RUN/serve.log)"
