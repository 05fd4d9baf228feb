"""Lookups racing the puller: sweeps, deltas and full resyncs must never hide a live ban.

Pure (no sockets): the tests' own LAPI (lapi_server.FakeLapi) answers in-process, through
the same `answer` it serves over HTTP, so the real StreamSource and DecisionIndex run with
their real threads and nothing else in between.
"""

from __future__ import annotations

import ipaddress
import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

from crowdsec_milter.decisions import parse_address
from crowdsec_milter.source import StreamSource
from lapi_server import FakeLapi


class InProcessLapi:
    """The LAPI client's stream contract (`stream_items`) answered by a FakeLapi directly;
    each answer goes through JSON so the source gets fresh objects, as from the wire."""

    def __init__(self, lapi: FakeLapi) -> None:
        self.lapi = lapi

    def stream_items(self, startup: bool) -> Iterator[tuple[str, Any]]:
        status, doc = self.lapi.answer("/v1/decisions/stream",
                                       {"startup": ["true" if startup else "false"]})
        assert status == 200
        doc = json.loads(json.dumps(doc))
        for key in ("new", "deleted"):
            for item in doc[key] or ():
                yield key, item


def _inside(net: str, rnd: random.Random) -> str:
    """A random address inside a network (the network itself for an address)."""
    network = ipaddress.ip_network(net, strict=False)
    return str(network[rnd.randrange(network.num_addresses)])


def _steady_bans(lapi: FakeLapi, rnd: random.Random) -> list[str]:
    """Live bans for the whole test (v4 and v6, Ip and Range); an address inside each."""
    probes = []
    for i in range(3000):  # ranges in many /16s, several lengths, as blocklists have
        plen = rnd.choice((24, 24, 24, 20, 28, 16, 30))
        net = ipaddress.ip_network((rnd.randrange(1 << 32) & ~0xFF000000 | 45 << 24, plen),
                                   strict=False)
        lapi.add(str(net), scope="Range", duration="1000h")
        probes.append(_inside(str(net), rnd))
        if i % 6 == 0:  # an address ban sharing that /16
            ip = _inside(str(net.supernet(new_prefix=16)), rnd)
            lapi.add(ip, duration="1000h")
            probes.append(ip)
    for _ in range(300):
        plen = rnd.choice((48, 56, 64, 112))
        net = ipaddress.ip_network((0x2001_0DB8 << 96 | rnd.randrange(1 << 96), plen),
                                   strict=False)
        lapi.add(str(net), scope="Range", duration="1000h")
        probes.append(_inside(str(net), rnd))
        ip = _inside(str(net), rnd)
        lapi.add(ip, duration="1000h")
        probes.append(ip)
    for _ in range(500):
        ip = f"46.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}"
        lapi.add(ip, duration="1000h")
        probes.append(ip)
    return probes


def test_no_lookup_misses_a_live_ban_during_sweeps_deltas_and_resyncs() -> None:
    rnd = random.Random(10)
    lapi = FakeLapi()
    probes = [parse_address(ip) for ip in _steady_bans(lapi, rnd)]
    now = [0.0]
    # resync every fifth pull; every pull advances the clock a minute, so each one sweeps
    src = StreamSource(InProcessLapi(lapi), 10.0, resync_interval=300.0,  # type: ignore[arg-type]
                       clock=lambda: now[0])
    assert src.pull_once()
    steady = len(src.index)

    done = threading.Event()
    errors: list[BaseException] = []
    misses: list[str] = []
    looked = [0]
    pulls = [0]

    def read() -> None:
        try:
            while not done.is_set() and len(misses) < 20:
                for family, number, text in probes:  # type: ignore[misc]
                    got = src.lookup(family, number, text)
                    if not got or got[0].type != "ban":
                        misses.append(f"{text} after {pulls[0]} pulls: {got!r}")
                looked[0] += len(probes)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    def churn() -> None:
        """Deltas that add and delete (and let expire) decisions beside the steady ones,
        in the same /16s and prefix lengths, then a pull: a sweep each time."""
        try:
            transient: list[int] = []
            deadline = time.monotonic() + 60.0
            while pulls[0] < 40 and time.monotonic() < deadline:
                for ident in transient[: len(transient) // 2]:
                    lapi.delete(ident)
                transient = transient[len(transient) // 2:]
                for _ in range(150):
                    top = f"45.{rnd.randrange(256)}"
                    kind = rnd.randrange(4)
                    if kind == 0:
                        value, scope = f"{top}.{rnd.randrange(256)}.0/{rnd.choice((22, 26))}", \
                            "Range"
                    elif kind == 1:
                        value, scope = f"{top}.{rnd.randrange(256)}.{rnd.randrange(256)}", "Ip"
                    elif kind == 2:
                        value, scope = f"2001:db8:{rnd.randrange(1 << 16):x}::/60", "Range"
                    else:
                        value, scope = f"2001:db8::{rnd.randrange(1 << 16):x}", "Ip"
                    # short-lived ones expire at the next sweep, the rest are deleted
                    duration = "30s" if rnd.random() < 0.5 else "2h"
                    transient.append(lapi.add(value, scope=scope, type_=rnd.choice(
                        ("ban", "captcha")), duration=duration))
                now[0] += 61.0
                assert src.pull_once()
                pulls[0] += 1
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)
        finally:
            done.set()

    threads = [threading.Thread(target=read, daemon=True) for _ in range(3)]
    threads.append(threading.Thread(target=churn, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(90.0)
    assert not any(t.is_alive() for t in threads), "a thread did not stop"
    assert errors == [], errors
    assert misses == [], f"{len(misses)} lookups missed a live ban, first: {misses[:3]}"
    assert pulls[0] >= 5 and looked[0] > 0  # the race really ran: sweeps and resyncs
    assert len(src.index) >= steady
