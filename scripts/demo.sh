#!/usr/bin/env bash
# The main job on the embedded default: train the default model briefly on
# Fashion-MNIST. `make demo` runs this inside the project's virtual environment.
set -euo pipefail
RUN=${RUN:-runs/demo}
EPOCHS=${EPOCHS:-2}

elunet datasets
elunet train --epochs "$EPOCHS" --out "$RUN" --force
