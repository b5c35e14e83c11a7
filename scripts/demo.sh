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
