# syntax=docker/dockerfile:1
#
# elunet images, one target each (docker-compose.yml builds them):
#
#   serve      the KServe-V2 server on ONNX Runtime with CUDA; no PyTorch.
#              With --build-arg SERVE_BASE=python:3.12-slim-bookworm and
#              --build-arg ORT_PACKAGE=onnxruntime: the CPU-only variant.
#   serve-trt  the server on TensorRT, with the ELU plugin compiled by CMake in
#              this build and loaded through ELUNET_TRT_PLUGIN_LIB.
#   train      PyTorch with CUDA, TensorRT and the plugin: elunet train, export
#              and build-engine. It shares serve-trt's TensorRT, so the engines
#              it builds load there (an engine only loads in the TensorRT
#              version that built it).
#   triton     NVIDIA Triton Inference Server of the same NGC release, with the
#              self-registering plugin preloaded: it serves the same model
#              repository unchanged (docs/guides/triton.md).
#
#   docker build --target serve -t elunet:serve .
#
# Every elunet image installs elunet from the wheel built in the `wheel`
# stage, with the extras it needs, runs as the unprivileged user elunet and
# reads the model repository from the volume /models (ELUNET_REPOSITORY).

# Every base image is a build argument: the defaults below are the production
# images; scripts/deploy_check.sh builds the same stages from a local Debian
# base (no registry there), e.g. --build-arg SERVE_BASE=localhost/debian:bookworm.
# Python with pip, to build elunet's wheel.
ARG WHEEL_BASE=python:3.12-slim-bookworm
# CUDA 13 + cuDNN 9: what the onnxruntime-gpu wheels on PyPI are built against.
ARG SERVE_BASE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
# onnxruntime-gpu (CUDA and CPU execution providers) or onnxruntime (CPU only).
ARG ORT_PACKAGE=onnxruntime-gpu
# NGC's TensorRT image: TensorRT, the CUDA toolkit and Python 3.12. Triton's
# image of the same release carries the same TensorRT.
ARG NGC_RELEASE=25.11
ARG TRT_IMAGE=nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3

# ---------------------------------------------------------------- wheel
FROM ${WHEEL_BASE} AS wheel
WORKDIR /src
COPY . .
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
 && ls /dist/elunet-*.whl

# ---------------------------------------------------------------- serve
FROM ${SERVE_BASE} AS serve
ARG ORT_PACKAGE
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/elunet/bin:$PATH \
    ELUNET_REPOSITORY=/models \
    ELUNET_HOST=0.0.0.0
RUN --mount=type=bind,source=deploy/runtime-setup.sh,target=/tmp/runtime-setup.sh sh /tmp/runtime-setup.sh
# The wheel is copied in, not bind-mounted from its stage: COPY keys the cache on the wheel itself, and
# buildah 1.28 (podman 4.3) could not mount a stage it had taken from its cache ("couldn't find
# .../merged/dist on host"), leaving /dist empty. Which sources it came from, for the build log:
ARG ELUNET_SOURCE=unknown
COPY --from=wheel /dist/ /tmp/dist/
RUN --mount=type=bind,source=deploy/install-serve.sh,target=/tmp/install-serve.sh --mount=type=bind,source=deploy/serve.lock,target=/tmp/serve.lock \
    echo "elunet from sources $ELUNET_SOURCE" && sh /tmp/install-serve.sh "$(ls /tmp/dist/elunet-*.whl)" serve "$ORT_PACKAGE" \
 && rm -rf /tmp/dist
COPY --chmod=755 deploy/healthcheck.py /opt/elunet/bin/elunet-healthcheck
USER elunet
WORKDIR /home/elunet
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["elunet-healthcheck"]
ENTRYPOINT ["elunet"]
CMD ["serve"]

# ------------------------------------------------------------- trt-base
# TensorRT plus the ELU plugin libraries, compiled here against the image's
# TensorRT (its headers and libnvinfer live under /usr). The plugin's op name,
# version and fields come from elunet/elu_plugin.json, which CMake reads.
FROM ${TRT_IMAGE} AS trt-base
# Empty: the plugin's default GPU architectures; e.g. "86;89" for RTX cards.
ARG CUDA_ARCHITECTURES=
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/elunet/bin:$PATH \
    ELUNET_REPOSITORY=/models \
    ELUNET_HOST=0.0.0.0 \
    ELUNET_TRT_PLUGIN_LIB=/opt/elunet/lib/libelunet_trt_plugins.so
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY elunet/elu_plugin.json /src/elunet/elu_plugin.json
COPY plugins/elu /src/plugins/elu
RUN cmake -S /src/plugins/elu -B /tmp/plugin-build -DTENSORRT_ROOT=/usr \
      ${CUDA_ARCHITECTURES:+"-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES"} \
 && cmake --build /tmp/plugin-build --parallel \
 && cmake --install /tmp/plugin-build --prefix /opt/elunet \
 && rm -rf /tmp/plugin-build \
 # Every library the plugins link must resolve inside the image.
 && for lib in /opt/elunet/lib/*.so; do \
      if ldd "$lib" | grep "not found"; then echo "$lib has unresolved libraries" >&2; exit 1; fi; \
    done \
 && test -f "$ELUNET_TRT_PLUGIN_LIB"
# The virtualenv sees the image's own TensorRT Python bindings; the constraint
# keeps pip from replacing them with another TensorRT from PyPI, which would
# not match the libraries the plugin was compiled against.
RUN --mount=type=bind,source=deploy/runtime-setup.sh,target=/tmp/runtime-setup.sh sh /tmp/runtime-setup.sh --system-site-packages \
 && python -c "import tensorrt; print('tensorrt==' + tensorrt.__version__)" > /opt/elunet/tensorrt-constraint.txt \
 && cat /opt/elunet/tensorrt-constraint.txt
COPY --chmod=755 deploy/healthcheck.py /opt/elunet/bin/elunet-healthcheck

# ------------------------------------------------------------ serve-trt
FROM trt-base AS serve-trt
ENV ELUNET_BACKEND=tensorrt
COPY --from=wheel /dist/ /tmp/dist/
RUN --mount=type=bind,source=deploy/install-serve.sh,target=/tmp/install-serve.sh --mount=type=bind,source=deploy/serve.lock,target=/tmp/serve.lock \
    PIP_CONSTRAINT=/opt/elunet/tensorrt-constraint.txt sh /tmp/install-serve.sh "$(ls /tmp/dist/elunet-*.whl)" serve,tensorrt onnxruntime \
 && rm -rf /tmp/dist && elunet build-engine --help >/dev/null
USER elunet
WORKDIR /home/elunet
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["elunet-healthcheck"]
ENTRYPOINT ["elunet"]
CMD ["serve"]

# ---------------------------------------------------------------- train
# PyTorch from PyPI (its Linux wheels bring their own CUDA libraries) and the
# real Fashion-MNIST from the distribution's package (/usr/share/datasets).
FROM trt-base AS train
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install -c /opt/elunet/tensorrt-constraint.txt "$(ls /tmp/dist/elunet-*.whl)[export,tensorrt]" && rm -rf /tmp/dist \
 && python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
 && elunet train --help >/dev/null && elunet export --help >/dev/null && elunet build-engine --help >/dev/null
USER elunet
WORKDIR /home/elunet
VOLUME ["/models", "/runs"]
ENTRYPOINT ["elunet"]
CMD ["--help"]

# --------------------------------------------------------------- triton
# LD_PRELOAD registers the ELU plugin before Triton's TensorRT backend
# deserializes an engine that uses it; ONNX models with the native Elu op
# need nothing extra.
FROM ${TRITON_IMAGE} AS triton
COPY --from=trt-base /opt/elunet/lib/libelunet_trt_plugins_static.so /opt/elunet/lib/
ENV LD_PRELOAD=/opt/elunet/lib/libelunet_trt_plugins_static.so
