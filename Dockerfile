# syntax=docker/dockerfile:1
#
# Images of the autoencoder service (docs/deploy.md says how to build and run them):
#   gpu    the default (last stage): CUDA 13 + cuDNN 9 runtime, onnxruntime-gpu
#   cpu    python:3.11-slim, onnxruntime
#   train  torch and the training code, for `python -m training` in a container
# The serving images hold service/ and the committed models only: no torch, no training code. Both
# install their Python packages with docker/install-service.sh, the script tests/deploy runs.

ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04


# ---------------------------------------------------------------------------------------------------
# cpu
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/ /build/requirements/
COPY docker/install-service.sh /build/docker/
RUN /build/docker/install-service.sh cpu /opt/venv


FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --system --user-group --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=cpu-build /opt/venv /opt/venv
WORKDIR /app
COPY docker/healthcheck.py /app/
COPY service/ /app/service/
# The committed default models: served when no models folder is mounted over /models.
COPY models/ /models/
# HOME and the caches point at /tmp, the one writable place of a read-only container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    AE_HOST=0.0.0.0 \
    AE_PORT=8000 \
    AE_MODELS_DIR=/models
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
ENTRYPOINT ["python", "-m", "service"]


# ---------------------------------------------------------------------------------------------------
# train: the pinned service runtime (the parity gate runs onnxruntime) plus `.[train]`, torch==2.13.0.
# PyPI's torch wheel brings its own CUDA libraries; for a smaller CPU-only image build with
#   --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
FROM ${PYTHON_IMAGE} AS train
# An ARG is in the environment of the RUNs below, where pip reads it; unset unless given.
ARG PIP_EXTRA_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/ /build/requirements/
COPY docker/install-service.sh /build/docker/
RUN /build/docker/install-service.sh cpu /opt/venv
COPY pyproject.toml /build/src/
COPY service/ /build/src/service/
COPY training/ /build/src/training/
# The lock as constraints: the train extra adds torch and its tools, never moves a pinned package.
RUN /opt/venv/bin/python -m pip install --constraint /build/requirements/service-cpu.txt "/build/src[train]" \
    && /opt/venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
RUN useradd --system --user-group --uid 10001 --no-create-home --shell /usr/sbin/nologin app
WORKDIR /work
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]


# ---------------------------------------------------------------------------------------------------
# gpu (the default target, so it stays the last stage)
FROM ${CUDA_IMAGE} AS gpu-base
# Ubuntu 24.04's Python 3.12. DL3008 (pin apt versions) is ignored: Ubuntu drops superseded versions
# from its index, so a pin breaks the build at the next security update; the CUDA tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*


FROM gpu-base AS gpu-build
# DL3008: as in gpu-base, python3-venv follows python3.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/ /build/requirements/
COPY docker/install-service.sh /build/docker/
RUN /build/docker/install-service.sh gpu /opt/venv


FROM gpu-base AS gpu
RUN useradd --system --user-group --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=gpu-build /opt/venv /opt/venv
WORKDIR /app
COPY docker/healthcheck.py /app/
COPY service/ /app/service/
COPY models/ /models/
# CUDA_CACHE_PATH: the CUDA JIT cache must live on the writable /tmp of a read-only container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    CUDA_CACHE_PATH=/tmp/cuda-cache \
    AE_HOST=0.0.0.0 \
    AE_PORT=8000 \
    AE_MODELS_DIR=/models
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
ENTRYPOINT ["python", "-m", "service"]
