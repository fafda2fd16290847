#!/bin/sh
# Installs the service's pinned runtime, requirements/service-<flavour>.txt, into a new virtual
# environment. The Dockerfile runs this script and tests/deploy runs it too, so the images install
# exactly what the tests install and start.
#
# usage: docker/install-service.sh cpu|gpu VENV_DIR
# PYTHON picks the interpreter that creates the environment (default python3); pip's own PIP_*
# variables apply (the images set PIP_NO_CACHE_DIR, the tests keep pip's cache).
set -eu

usage="usage: $0 cpu|gpu VENV_DIR"
flavour="${1:?$usage}"
venv="${2:?$usage}"
requirements="$(dirname "$0")/../requirements/service-${flavour}.txt"
if [ ! -f "$requirements" ]; then
    echo "$0: no $requirements ($usage)" >&2
    exit 2
fi

"${PYTHON:-python3}" -m venv "$venv"
# Wheels only: the slim and CUDA runtime bases have no compiler, and a source build would make the
# image depend on whatever toolchain happened to be there.
"$venv/bin/python" -m pip install --no-input --disable-pip-version-check --only-binary=:all: \
    --requirement "$requirements"
"$venv/bin/python" -m pip check
