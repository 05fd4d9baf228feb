"""Container health: /health of the metrics listener when there is one, else the milter
port accepts a connection. Exit 0 healthy, 1 not."""

from __future__ import annotations

import os
import re
import socket
import sys
import urllib.request


def main() -> int:
    metrics = os.environ.get("CROWDSEC_MILTER_METRICS_LISTEN", "")
    try:
        if metrics:
            host, _, port = metrics.rpartition(":")
            host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host.strip("[]")
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=3) as r:
                return 0 if r.status == 200 else 1
        spec = os.environ.get("CROWDSEC_MILTER_SOCKET", "inet:8895@127.0.0.1")
        m = re.match(r"inet6?:(\d+)(?:@(.+))?$", spec)
        if not m:
            return 0  # a unix socket: the process being alive is all we can see
        host = m.group(2) or "127.0.0.1"
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        socket.create_connection((host, int(m.group(1))), timeout=3).close()
        return 0
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
