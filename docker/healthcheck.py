"""Container health check: exit 0 when the service answers GET /readyz with 200, else 1.

The slim and CUDA images have no curl, so Docker's HEALTHCHECK runs this with the image's Python.
Kubernetes probes the same routes with httpGet and does not need it.
"""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('AE_PORT', '8000')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:  # HTTPError (503 while loading) is a URLError
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
