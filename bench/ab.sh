#!/usr/bin/env bash
# A/B of two running servers, alternating so that neither gains from going first (order matters by 20%
# on this 2-core machine): bench/ab.sh URL_A URL_B [ROWS] [CONNECTIONS] [SECONDS] [ROUNDS]
#   bench/ab.sh http://127.0.0.1:8200/score http://127.0.0.1:8300/score 1 64
set -euo pipefail
a=$1 b=$2 rows=${3:-1} connections=${4:-64} seconds=${5:-5} rounds=${6:-3}
body=$(mktemp)
python3 -c "import json, random; random.seed(0); print(json.dumps({'inputs': [[float(random.randrange(256)) for _ in range(784)] for _ in range($rows)]}))" >"$body"
for round in $(seq "$rounds"); do
  for url in "$a" "$b"; do
    BODY=$body CTYPE=application/json wrk -t1 -c"$connections" -d"${seconds}s" -s "$(dirname "$0")/post.lua" "$url" |
      sed -n "s|^RESULT|round $round $url|p"
  done
done
rm -f "$body"
