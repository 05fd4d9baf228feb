"""Shared pieces of the benchmarks: decision sets, a LAPI blob server, RSS readings."""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


def decisions(n_ip: int, n_range: int, seed: int = 7) -> list[dict[str, Any]]:
    """n_ip Ip decisions (90% IPv4) and n_range Range decisions (v4 /16-/28, v6 /32-/64),
    shaped like a community blocklist: few scenarios, durations with fractions."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    scenarios = ["crowdsecurity/ssh-bf", "crowdsecurity/postfix-spam",
                 "crowdsecurity/http-probing", "crowdsec-milter/dictionary-attack"]
    for i in range(n_ip):
        if rnd.random() < 0.9:
            value = ".".join(str(rnd.randint(1, 254)) for _ in range(4))
        else:
            a, b, c = (rnd.getrandbits(16) for _ in range(3))
            value = f"2001:db8:{a:x}:{b:x}::{c:x}"
        out.append(_d(i, "Ip", value, rnd, scenarios))
    for j in range(n_range):
        if rnd.random() < 0.8:
            plen = rnd.randint(16, 28)
            base = rnd.getrandbits(32) >> (32 - plen) << (32 - plen)
            value = f"{base >> 24}.{base >> 16 & 255}.{base >> 8 & 255}.{base & 255}/{plen}"
        else:
            value = f"2001:db8:{rnd.getrandbits(16):x}::/48"
        out.append(_d(n_ip + j, "Range", value, rnd, scenarios))
    return out


def _d(i: int, scope: str, value: str, rnd: random.Random, scenarios: list[str]) -> dict:
    return {"id": i + 1, "origin": "CAPI", "type": "ban", "scope": scope, "value": value,
            "duration": f"{rnd.randint(1, 167)}h{rnd.randint(0, 59)}m{rnd.random() * 60:.3f}s",
            "scenario": rnd.choice(scenarios), "simulated": False}


def stream_body(items: list[dict[str, Any]]) -> bytes:
    return json.dumps({"deleted": None, "new": items}).encode()


class BlobLapi:
    """Serves one prepared stream answer, and `?ip=` answers counted, on loopback.

    `live` maps an address to the decisions a `?ip=` lookup of it gets; any other address
    gets `null` (no decision), so give every address the caller expects to be banned.
    """

    def __init__(self, body: bytes, key: str = "bench-key",
                 live: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.body = body
        self.live = {_canonical(ip): json.dumps(found).encode()
                     for ip, found in (live or {}).items()}
        self.live_requests = 0
        counting = threading.Lock()
        lapi = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.headers.get("X-Api-Key") != key:
                    self._send(403, b'{"message":"access forbidden"}')
                elif self.path.startswith("/v1/decisions/stream"):
                    # the whole set at startup, empty deltas after, as LAPI does
                    self._send(200, lapi.body if "startup=true" in self.path
                               else b'{"deleted":null,"new":null}')
                elif self.path.startswith("/v1/decisions"):
                    with counting:
                        lapi.live_requests += 1
                    ip = parse_qs(urlparse(self.path).query).get("ip", [""])[0]
                    self._send(200, lapi.live.get(_canonical(ip), b"null"))
                else:
                    self._send(404, b"{}")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            # socketserver's default backlog is 5: with 32 client threads, connection
            # attempts were dropped and retried a second later, past the 2 s timeout. Go's
            # listener (the real LAPI) uses the system's somaxconn.
            request_queue_size = 128

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _canonical(ip: str) -> str:
    """One spelling per address, so 2001:db8:0:0::1 and 2001:db8::1 meet."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Until something accepts connections on the loopback port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 1e6


def peak_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e3
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
