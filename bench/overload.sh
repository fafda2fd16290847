#!/usr/bin/env bash
# The large-body overload of docs/benchmark.md (Shedding before the body is read): CONNECTIONS connections
# sending ROWS-row float32 .npy bodies of MNIST images to a running service's mnist-conv, SECONDS of wrk with
# its default timeouts and no warm-up; prints wrk's RESULT line (bench/post.lua) and its socket errors.
#   bench/overload.sh URL [ROWS] [CONNECTIONS] [SECONDS]   (from the repository root; PYTHON: one with numpy)
#   bench/overload.sh http://127.0.0.1:8000/models/mnist-conv/score 1024 64 15
set -euo pipefail
url=$1 rows=${2:-1024} connections=${3:-64} seconds=${4:-15}
body=$(mktemp)
"${PYTHON:-.venv/bin/python}" -c "import sys, numpy as np; np.save(sys.stdout.buffer, np.random.default_rng(0).integers(0, 256, size=($rows, 28, 28)).astype(np.float32))" >"$body"
BODY=$body CTYPE=application/x-npy ACCEPT=application/x-npy \
  wrk -t1 -c"$connections" -d"${seconds}s" -s "$(dirname "$0")/post.lua" "$url" | grep -E "RESULT|Socket errors"
rm -f "$body"
