"""Container health for crowdsec-milter (the image's HEALTHCHECK).

With CROWDSEC_MILTER_METRICS_LISTEN set, healthy means its /health answers 200 (the milter
holds decisions). Without it, healthy means the milter's inet socket takes a connection.
Exit status 0 healthy, 1 not."""

from __future__ import annotations

import os
import re
import socket
import sys
import urllib.request

_ANY = ("", "0.0.0.0", "::")


def _local(host: str) -> str:
    """Where to reach a listener bound to `host` from inside the container."""
    host = host.strip("[]")
    if host in _ANY:
        return "127.0.0.1" if host != "::" else "::1"
    return host


def health_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    host = _local(host)
    return f"http://[{host}]:{port}/health" if ":" in host else f"http://{host}:{port}/health"


def milter_address(spec: str) -> tuple[str, int] | None:
    """(host, port) of an inet:PORT@HOST or inet6:PORT@HOST socket; None for unix:."""
    m = re.fullmatch(r"inet6?:(\d+)(?:@(.+))?", spec)
    if not m:
        return None
    return _local(m.group(2) or ""), int(m.group(1))


def main() -> int:
    listen = os.environ.get("CROWDSEC_MILTER_METRICS_LISTEN", "")
    try:
        if listen:
            with urllib.request.urlopen(health_url(listen), timeout=3) as r:
                return 0 if r.status == 200 else 1
        address = milter_address(os.environ.get("CROWDSEC_MILTER_SOCKET", "inet:8895@127.0.0.1"))
        if address is None:
            return 0  # a unix socket: that the process runs is all a health check can see
        socket.create_connection(address, timeout=3).close()
        return 0
    except OSError:  # refused, timed out, or an HTTP error status (503: no decisions yet)
        return 1


if __name__ == "__main__":
    sys.exit(main())
