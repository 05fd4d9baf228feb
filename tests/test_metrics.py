"""The metrics endpoint under churn and against idle clients, over real HTTP."""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from crowdsec_milter.decisions import parse_decision
from crowdsec_milter.lapi import LapiClient
from crowdsec_milter.metrics import MetricsServer, MilterCollector
from crowdsec_milter.source import StreamSource
from crowdsec_milter.tally import Tally
from lapi_server import FakeLapi
from waiting import eventually

HELD = re.compile(r'^crowdsec_milter_decisions\{family="ipv(\d)",scope="(\w+)"\} (\S+)$', re.M)


@pytest.fixture
def synced(fake_lapi: tuple[FakeLapi, str]) -> Iterator[tuple[StreamSource, str]]:
    """A stream source synced from the tests' LAPI, and the metrics server reading it."""
    lapi, url = fake_lapi
    lapi.add("203.0.113.7")
    src = StreamSource(LapiClient(url, "test-key", 2.0), 10.0)
    assert src.pull_once()
    server = MetricsServer("127.0.0.1", 0, MilterCollector(Tally(), src, None),
                           lambda: src.usable, read_timeout=0.5)
    server.start()
    yield src, f"http://127.0.0.1:{server.port}"
    server.stop()


def _range(rnd: random.Random) -> tuple[int, str, str]:
    if rnd.random() < 0.8:
        return (rnd.randrange(1 << 40), f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.0/24",
                "Range")
    if rnd.random() < 0.5:
        return rnd.randrange(1 << 40), f"2001:db8:{rnd.randrange(1 << 16):x}::/48", "Range"
    return rnd.randrange(1 << 40), f"192.0.{rnd.randrange(256)}.{rnd.randrange(256)}", "Ip"


def _decision(ident: int, value: str, scope: str, now: float):  # type: ignore[no-untyped-def]
    parsed = parse_decision({"id": ident, "type": "ban", "scope": scope, "value": value,
                             "duration": "4h", "origin": "cscli", "scenario": "s"}, now)
    assert parsed is not None
    return parsed


def test_scrapes_while_the_index_churns_never_fail_and_count_right(
        synced: tuple[StreamSource, str]) -> None:
    src, base = synced
    index = src.index
    rnd = random.Random(2)
    now = time.monotonic()
    held = []
    with index.lock:  # a big blocklist of ranges, as a delta brings it
        for _ in range(40_000):
            ident, value, scope = _range(rnd)
            index.add(*_decision(ident, value, scope, now))
            held.append((ident, value, scope))
    done = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        """What the puller does with deltas: add and delete under the index's lock."""
        try:
            while not done.is_set():
                with index.lock:
                    for _ in range(200):
                        ident, value, scope = _range(rnd)
                        index.add(*_decision(ident, value, scope, now))
                        held.append((ident, value, scope))
                        gone = held.pop(rnd.randrange(len(held)))
                        index.remove(gone[0], _decision(*gone, now)[1])
                time.sleep(0)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    writer = threading.Thread(target=churn, daemon=True)
    writer.start()
    failed = []
    try:
        for _ in range(60):
            try:
                answer = httpx.get(base + "/metrics", timeout=10.0)
                if answer.status_code != 200 or not HELD.search(answer.text):
                    failed.append(f"{answer.status_code}: {answer.text[:200]!r}")
            except httpx.HTTPError as exc:
                failed.append(repr(exc))
    finally:
        done.set()
        writer.join(30.0)
    assert not writer.is_alive() and errors == [], errors
    assert failed == [], f"{len(failed)} of 60 scrapes failed, first: {failed[0]}"
    brute: dict[tuple[str, int], int] = {}
    for d in index.decisions():
        family = 6 if ":" in d.value else 4
        brute[(d.scope, family)] = brute.get((d.scope, family), 0) + 1
    assert index.counts() == brute
    text = httpx.get(base + "/metrics").text
    scraped = {(scope, int(family)): int(float(n)) for family, scope, n in HELD.findall(text)}
    assert scraped == brute


def test_an_idle_connection_is_closed_and_others_are_served(
        synced: tuple[StreamSource, str]) -> None:
    _, base = synced
    threads = threading.active_count()
    host, port = base.removeprefix("http://").rsplit(":", 1)
    idle = socket.create_connection((host, int(port)))
    try:
        idle.settimeout(10.0)  # far past the server's 0.5 s: only a bound for the test
        assert eventually(lambda: threading.active_count() > threads, timeout=5.0)
        for _ in range(3):  # served while the idle one waits
            assert httpx.get(base + "/metrics", timeout=5.0).status_code == 200
            assert httpx.get(base + "/health", timeout=5.0).status_code == 200
        started = time.monotonic()
        assert idle.recv(1) == b""  # the server hung up on a client that sent nothing
        assert time.monotonic() - started < 10.0
    finally:
        idle.close()
    # its thread is gone too
    assert eventually(lambda: threading.active_count() <= threads, timeout=5.0)
