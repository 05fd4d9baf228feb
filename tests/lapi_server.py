"""A real HTTP server of the tests' own that speaks the LAPI bouncer contract.

Used for faults a real CrowdSec cannot be made to produce on demand (garbage JSON, a hang,
a 500, a huge body), and by the benchmarks as a LAPI that costs next to nothing. It keeps a
server-side stream cursor like LAPI does: `startup=true` returns every active decision,
later pulls return what changed since. For the benchmarks it can serve prepared answers
as they are (`startup_body`, `ip_bodies`): a million decisions are encoded once, not per
request.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Fault:
    """What the next requests get instead of a proper answer."""

    status: int = 200
    body: bytes | None = None  # raw body instead of JSON
    delay: float = 0.0  # seconds before answering
    hang: bool = False  # accept and never answer (until the server stops)
    drip: float = 0.0  # send the whole answer, status line first, one byte every `drip` s
    count: int = -1  # how many requests it applies to; -1 = until cleared
    hold: threading.Event | None = None  # answer (properly) only once this is set
    only: str | None = None  # applies only to requests whose path and query contain this


@dataclass
class FakeLapi:
    key: str = "test-key"
    decisions: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = field(default_factory=list)
    fault: Fault | None = None
    usage_status: int = 201  # 404 plays a LAPI older than 1.6.3
    usage_posts: list[Any] = field(default_factory=list)
    # prepared answers: the whole startup stream answer, and `?ip=` answers by address
    # (any other address: no decision); a delta then has nothing new
    startup_body: bytes | None = None
    ip_bodies: dict[str, bytes] | None = None
    keep_requests: bool = True  # False: only `count` them (a long soak)
    _counts: dict[str, int] = field(default_factory=dict)
    _pending_new: list[dict[str, Any]] = field(default_factory=list)
    _pending_deleted: list[dict[str, Any]] = field(default_factory=list)
    _next_id: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def add(self, value: str, type_: str = "ban", scope: str = "Ip", duration: str = "4h",
            scenario: str = "test/scenario", origin: str = "cscli") -> int:
        with self._lock:
            ident = self._next_id
            self._next_id += 1
            d = {"id": ident, "origin": origin, "type": type_, "scope": scope, "value": value,
                 "duration": duration, "scenario": scenario, "simulated": False}
            self.decisions[ident] = d
            self._pending_new.append(d)
            return ident

    def slip(self, value: str, duration: str = "4h") -> int:
        """A decision LAPI holds but no delta will ever bring: as CrowdSec 1.4.6 does with
        one committed while a pull ran (its created_at falls before the cursor the pull
        then set); only a full pull (startup=true) has it."""
        ident = self.add(value, duration=duration)
        with self._lock:
            self._pending_new = [d for d in self._pending_new if d["id"] != ident]
        return ident

    def delete(self, ident: int) -> None:
        with self._lock:
            d = self.decisions.pop(ident)
            self._pending_deleted.append({**d, "duration": "-1s"})

    def hard_delete(self, ident: int) -> None:
        """Gone without a trace in `deleted`, as when an alert is deleted."""
        with self._lock:
            self.decisions.pop(ident)

    def count(self, path: str) -> int:
        """Requests made for `path` (HEAD ones as "HEAD /path")."""
        return self._counts.get(path, 0)

    def note(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> None:
        with self._lock:
            self._counts[path] = self._counts.get(path, 0) + 1
            if self.keep_requests:
                self.requests.append((path, query, headers))

    def prepare_ip_answers(self, found: dict[str, list[dict[str, Any]]]) -> None:
        """What `?ip=` answers for each address, encoded once (keys in any spelling)."""
        self.ip_bodies = {_canonical(ip): json.dumps(ds).encode() for ip, ds in found.items()}

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        """Status and document (bytes: sent as they are) for a GET with a good key."""
        with self._lock:
            if path == "/v1/decisions/stream":
                if query.get("startup", ["false"])[0] == "true" and self.startup_body:
                    return 200, self.startup_body
                # as LAPI: only the scopes asked for (ip,range unless told); a decision
                # whose scope is not a string is sent anyway, to test our parser
                scopes = query.get("scopes", ["ip,range"])[0].lower().split(",")

                def wanted(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
                    return [d for d in items if not isinstance(d.get("scope"), str)
                            or d["scope"].lower() in scopes]

                if query.get("startup", ["false"])[0] == "true":
                    self._pending_new.clear()
                    self._pending_deleted.clear()
                    return 200, {"new": wanted(list(self.decisions.values())) or None,
                                 "deleted": None}
                new, deleted = self._pending_new[:], self._pending_deleted[:]
                self._pending_new.clear()
                self._pending_deleted.clear()
                return 200, {"new": wanted(new) or None, "deleted": wanted(deleted) or None}
            if path == "/v1/decisions":
                if self.ip_bodies is not None and "ip" in query:
                    return 200, self.ip_bodies.get(_canonical(query["ip"][0]), b"null")
                if "scopes" in query and "value" in query:  # scopes=Country&value=FR
                    scope, value = query["scopes"][0].lower(), query["value"][0]
                    return 200, [d for d in self.decisions.values()
                                 if str(d.get("scope")).lower() == scope
                                 and d.get("value") == value] or None
                if "ip" not in query:  # no filter: every active decision
                    return 200, list(self.decisions.values()) or None
                ip = ipaddress.ip_address(query["ip"][0])
                hits = [d for d in self.decisions.values() if _covers(d, ip)]
                return 200, hits or None
            if path == "/health":
                return 200, {"status": "up"}
        return 404, {"message": "not found"}


def _canonical(ip: str) -> str:
    """One spelling per address, so 2001:db8:0:0::1 and 2001:db8::1 meet."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def _covers(decision: dict[str, Any], ip: Any) -> bool:
    """LAPI matches `?ip=` against Ip and Range rows only (kept as numbers, never bad)."""
    if decision["scope"].lower() not in ("ip", "range"):
        return False
    try:
        return ip in ipaddress.ip_network(decision["value"], strict=False)
    except ValueError:
        return False


def serve(lapi: FakeLapi) -> tuple[ThreadingHTTPServer, str]:
    """Start the server on a free loopback port; returns it and its base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            lapi.note(url.path, query, dict(self.headers))
            fault = lapi.fault
            if fault is not None and fault.only is not None and fault.only not in self.path:
                fault = None
            if fault is not None and fault.count != 0:
                if fault.count > 0:
                    fault.count -= 1
                if fault.hang:
                    lapi._stopping.wait(30)
                    return
                if fault.hold is not None:
                    fault.hold.wait(30)
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.status != 200 or fault.body is not None:
                    body = fault.body if fault.body is not None else b'{"message":"error"}'
                    self._send(fault.status, body)
                    return
            if url.path != "/health" and self.headers.get("X-Api-Key") != lapi.key:
                self._send(403, b'{"message":"access forbidden"}')
                return
            status, doc = lapi.answer(url.path, query)
            body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            if fault is not None and fault.drip:
                self._drip(status, body, fault.drip)
                return
            self._send(status, body)

        def do_HEAD(self) -> None:
            """As LAPI: 200 for a good key whatever decisions exist, 403 for a bad one."""
            url = urlparse(self.path)
            lapi.note("HEAD " + url.path, parse_qs(url.query), dict(self.headers))
            status = 200 if self.headers.get("X-Api-Key") == lapi.key else 403
            if url.path not in ("/v1/decisions", "/v1/decisions/stream"):
                status = 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()

        def do_POST(self) -> None:
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            lapi.note(url.path, {}, dict(self.headers))
            if self.headers.get("X-Api-Key") != lapi.key:
                self._send(403, b'{"message":"access forbidden"}')
                return
            if url.path == "/v1/usage-metrics" and lapi.usage_status != 404:
                lapi.usage_posts.append(json.loads(body))
                self._send(lapi.usage_status, b"")
                return
            self._send(404, b'{"message":"not found"}')

        def _drip(self, status: int, body: bytes, pause: float) -> None:
            """A LAPI that always has one more byte coming: never idle for a whole read
            timeout, so only a deadline on the request as a whole ends the wait."""
            head = (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            for i, byte in enumerate(head + body):
                if i and lapi._stopping.wait(pause):
                    return
                try:
                    self.wfile.write(bytes((byte,)))
                except OSError:
                    return  # the client gave up

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        # as a real LAPI listens (Go uses somaxconn); socketserver's default of 5 drops
        # connection attempts from many threads at once, which then look like timeouts
        request_queue_size = 128

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # clients that time out and hang up are what the fault tests are about

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def stop(lapi: FakeLapi, server: ThreadingHTTPServer) -> None:
    """Stop the server, ending hung answers first."""
    lapi._stopping.set()
    server.shutdown()
    server.server_close()
