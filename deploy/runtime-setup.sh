#!/bin/sh
# Run once by each runtime stage of the Dockerfile, whatever its base image:
#   - Python 3 with venv (the CUDA base images have no Python at all),
#   - the virtualenv /opt/elunet (first on PATH through the Dockerfile's ENV),
#     created with the arguments given, e.g. --system-site-packages so that it
#     sees the TensorRT bindings of NGC's image,
#   - the unprivileged user elunet (uid 10001) owning /models and /runs, the
#     volumes it writes (export, train) or reads (serve).
set -eu
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv
    rm -rf /var/lib/apt/lists/*
fi
python3 -m venv "$@" /opt/elunet
/opt/elunet/bin/pip install --upgrade pip
useradd --system --uid 10001 --user-group --create-home elunet
mkdir -p /models /runs
chown elunet:elunet /models /runs
