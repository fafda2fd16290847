#
# Images of the autoencoder service (docs/deploy.md says how to build and run them, and offline):
#   gpu    the default (last stage): CUDA 13 + cuDNN 9 runtime, onnxruntime-gpu
#   cpu    python:3.11-slim, onnxruntime
#   train  torch and the training code, for `python -m training` in a container
# The serving images hold service/ and the committed models only: no torch, no training code. Both
# install their Python packages with docker/install-service.sh, the script tests/deploy runs, and drop
# what the service never imports with docker/slim-venv.sh.
# No `# syntax=` line: the builder's own Dockerfile frontend builds this file, so neither the legacy
# builder nor BuildKit fetches anything from a registry but the base images (both build arguments).

ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04


# ---------------------------------------------------------------------------------------------------
# cpu
FROM ${PYTHON_IMAGE} AS cpu-install
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/ /build/requirements/
COPY docker/install-service.sh /build/docker/
RUN /build/docker/install-service.sh cpu /opt/venv


# onnxruntime's offline tools (quantization, transformer optimisers, model converters) and numpy's
# Fortran wrapper, distutils and C headers: nothing the service imports. Some wheels ship their
# extension modules with debug symbols (uvloop's, simdjson's: 20 MB in all); binutils' strip stays in
# this stage. Not the libraries auditwheel vendored into <package>.libs/: patchelf rewrote them, and
# strip breaks what patchelf wrote ("ELF load command address/offset not page-aligned").
FROM cpu-install AS cpu-build
# DL3008: a build tool of a throw-away stage, whichever version the base's Debian release has.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
COPY docker/slim-venv.sh /build/docker/
RUN /build/docker/slim-venv.sh /opt/venv \
        onnxruntime/tools onnxruntime/quantization onnxruntime/transformers \
        numpy/f2py numpy/distutils numpy/_core/include \
    && find /opt/venv -name "*.so*" -type f -not -path "*.libs/*" -exec strip --strip-debug {} +


FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --system --user-group --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=cpu-build /opt/venv /opt/venv
WORKDIR /app
COPY docker/healthcheck.py /app/
COPY service/ /app/service/
# Byte-code now: the container's root is read-only, so the service could not cache it at start-up.
RUN /opt/venv/bin/python -m compileall -q /app/service
# The committed default models: served when no models folder is mounted over /models.
COPY models/ /models/
# HOME and the caches point at /tmp, the one writable place of a read-only container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    AE_HOST=0.0.0.0 \
    AE_PORT=8000 \
    AE_MODELS_DIR=/models \
    AE_LOG_FORMAT=json
USER 10001:10001
# HTTP, and gRPC beside it (AE_GRPC_PORT).
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
ENTRYPOINT ["python", "-m", "service"]


# ---------------------------------------------------------------------------------------------------
# train: the pinned service runtime (the parity gate runs onnxruntime) plus `.[train]`, torch==2.13.0.
# torch comes from docker/wheels/ when a wheel is there (git ignores that folder's wheels): put the CPU
# wheel there, or build with --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu, for
# an image without PyPI's CUDA libraries (docs/deploy.md).
FROM cpu-install AS train-build
# An ARG is in the environment of the RUNs below, where pip reads it; unset unless given.
ARG PIP_EXTRA_INDEX_URL
COPY docker/wheels/ /build/wheels/
# The train extra's packages, from pyproject.toml alone: with no code beside it the project installs as an
# empty distribution (uninstalled below), so this stage, and the 1.5 GB it copies into the image, changes
# only with the dependencies; the code goes into the image after it. The lock as constraints: the extra
# adds torch and its tools, never moves a pinned package.
COPY pyproject.toml /build/src/
RUN /opt/venv/bin/python -m pip install --find-links /build/wheels \
        --constraint /build/requirements/service-cpu.txt "/build/src[train]" \
    && /opt/venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
COPY docker/slim-venv.sh /build/docker/
RUN /opt/venv/bin/python -m pip uninstall --yes --quiet autoencoder-service \
    && /build/docker/slim-venv.sh /opt/venv


FROM ${PYTHON_IMAGE} AS train
RUN useradd --system --user-group --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=train-build /opt/venv /opt/venv
# training/ and the package format it shares with service/, importable from /app.
COPY service/ /app/service/
COPY training/ /app/training/
RUN /opt/venv/bin/python -m compileall -q /app
WORKDIR /work
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
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


FROM gpu-base AS gpu-install
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


# As in cpu-build (Python 3.12's numpy has no distutils).
FROM gpu-install AS gpu-build
# DL3008: as in cpu-build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
COPY docker/slim-venv.sh /build/docker/
RUN /build/docker/slim-venv.sh /opt/venv \
        onnxruntime/tools onnxruntime/quantization onnxruntime/transformers \
        numpy/f2py numpy/_core/include \
    && find /opt/venv -name "*.so*" -type f -not -path "*.libs/*" -exec strip --strip-debug {} +


FROM gpu-base AS gpu
RUN useradd --system --user-group --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=gpu-build /opt/venv /opt/venv
WORKDIR /app
COPY docker/healthcheck.py /app/
COPY service/ /app/service/
RUN /opt/venv/bin/python -m compileall -q /app/service
COPY models/ /models/
# CUDA_CACHE_PATH: the CUDA JIT cache must live on the writable /tmp of a read-only container.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    CUDA_CACHE_PATH=/tmp/cuda-cache \
    AE_HOST=0.0.0.0 \
    AE_PORT=8000 \
    AE_MODELS_DIR=/models \
    AE_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
ENTRYPOINT ["python", "-m", "service"]
