"""The image's HEALTHCHECK: healthy once the server answers ``/readyz`` with 200 (stdlib only,
no curl or shell in the image needed)."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("SERVING_PORT", "8080")
    # No proxy: a container's HTTP(S)_PROXY must not catch its own loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/readyz", timeout=4) as resp:
            return 0 if resp.status == 200 else 1
    except (OSError, urllib.error.HTTPError) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
