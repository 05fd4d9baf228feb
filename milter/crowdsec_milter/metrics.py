"""Prometheus metrics and /health over HTTP (`--metrics-listen HOST:PORT`).

Nothing here runs on the milter's hot path: sessions bump plain counters (tally.Tally) and
this collector reads them, the sources' stats and the index sizes when scraped.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .source import Source
from .tally import ERRORS, SESSIONS, Tally

log = logging.getLogger("crowdsec_milter.metrics")
P = "crowdsec_milter_"


class MilterCollector:
    """Reads the running parts' counters at scrape time."""

    def __init__(self, tally: Tally, source: Source,
                 events: Any | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._tally = tally
        self._source = source
        self._events = events
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        snap = self._tally.snapshot()
        sessions = CounterMetricFamily(P + "sessions", "SMTP sessions seen (milter connects)")
        sessions.add_metric([], snap.get(SESSIONS, 0))
        yield sessions
        blocks = CounterMetricFamily(P + "blocks", "Clients answered because of a decision",
                                     labels=["type", "origin", "stage", "action"])
        accounts = CounterMetricFamily(P + "account_blocks",
                                       "Logins answered because of a decision on the account",
                                       labels=["type", "origin", "action"])
        lookups = CounterMetricFamily(P + "lookups", "Client addresses looked up",
                                      labels=["result"])
        rcpt = CounterMetricFamily(P + "rcpt_rejected",
                                   "Recipients the MTA rejected, seen as events",
                                   labels=["status"])
        for key, value in snap.items():
            if key.kind == "blocked":
                blocks.add_metric([key.type, key.origin, key.stage, key.action], value)
            elif key.kind == "account_blocked":
                accounts.add_metric([key.type, key.origin, key.action], value)
            elif key.kind == "lookup":
                lookups.add_metric([key.result], value)
            elif key.kind == "rcpt_rejected":
                rcpt.add_metric([key.result], value)
        yield blocks
        yield accounts
        yield lookups
        yield rcpt
        errors = CounterMetricFamily(P + "internal_errors", "Exceptions caught in callbacks")
        errors.add_metric([], snap.get(ERRORS, 0))
        yield errors
        yield from self._source_metrics()
        if self._events is not None:
            written = CounterMetricFamily(P + "events_written", "Event lines written")
            written.add_metric([], self._events.written)
            dropped = CounterMetricFamily(P + "events_dropped",
                                          "Event lines dropped (queue full or write error)")
            dropped.add_metric([], self._events.dropped)
            yield written
            yield dropped

    def _source_metrics(self) -> Iterator[Metric]:
        stats = self._source.stats()
        req = CounterMetricFamily(P + "lapi_requests", "Requests made to LAPI", labels=["mode"])
        req.add_metric([stats.mode], stats.requests)
        err = CounterMetricFamily(P + "lapi_errors", "LAPI requests that failed",
                                  labels=["kind"])
        for kind, n in stats.errors.items():
            err.add_metric([kind], n)
        usable = GaugeMetricFamily(P + "source_usable",
                                   "1 when decisions can be had (synced, or LAPI answering)")
        usable.add_metric([], 1.0 if stats.usable else 0.0)
        bad = CounterMetricFamily(P + "bad_decisions", "Decisions from LAPI skipped as unusable")
        bad.add_metric([], stats.bad_decisions)
        wide = GaugeMetricFamily(P + "decisions_too_wide",
                                 "Range decisions known but not enforced: wider than "
                                 "--widest-range")
        wide.add_metric([], stats.wide)
        yield bad
        yield wide
        if stats.held is not None:  # a source that holds decisions pulls them
            held = GaugeMetricFamily(P + "decisions", "Decisions held in memory",
                                     labels=["scope", "family"])
            for (scope, family), n in stats.held.items():
                held.add_metric([scope, f"ipv{family}"], n)
            yield held
            since = GaugeMetricFamily(P + "seconds_since_last_pull",
                                      "Seconds since the last successful stream pull")
            last = stats.last_good
            since.add_metric([], float("inf") if last is None else self._clock() - last)
            yield since
        if stats.cache_hits is not None:
            hits = CounterMetricFamily(P + "cache_hits", "Live lookups answered from the cache")
            hits.add_metric([], stats.cache_hits)
            yield hits
            entries = GaugeMetricFamily(P + "cache_entries",
                                        "Live answers held in the cache (at most cache_size)")
            entries.add_metric([], stats.cache_entries or 0)
            yield entries
            size = GaugeMetricFamily(P + "cache_size", "The live cache's bound (--cache-size)")
            size.add_metric([], stats.cache_size or 0)
            yield size
        yield req
        yield err
        yield usable


class MetricsServer:
    """/metrics for Prometheus and /health (200 only when the decision source is usable)."""

    def __init__(self, host: str, port: int, collector: MilterCollector,
                 usable: Callable[[], bool], *, read_timeout: float = 10.0) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)  # type: ignore[arg-type]

        class Handler(BaseHTTPRequestHandler):
            # a client that connects and sends nothing (or stalls) is dropped after this
            # many seconds instead of holding a thread for as long as it likes
            timeout = read_timeout

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), "text/plain; version=0.0.4")
                elif path == "/health":
                    ok = usable()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"no decisions yet\n",
                               "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = listen(host, port, Handler)
        self.port = self._server.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Server4(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server4):
    address_family = socket.AF_INET6


def listen(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """An HTTP server bound to host:port, IPv4 or IPv6 as the host is (`::1`, `::`, a name).
    Raises OSError (a busy port, an address we do not have, a name that does not resolve)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server_class = _Server6 if family == socket.AF_INET6 else _Server4
    return server_class(address, handler)
