"""The bouncer end to end: real CrowdSec decisions (cscli), the real milter program, a real
Postfix, clients played with XCLIENT. Both modes, IPv4 and IPv6, Ip and Range scopes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import Node
from real_crowdsec import CrowdSec
from real_postfix import blocked, delivered
from waiting import eventually

pytestmark = pytest.mark.integration
_n = itertools.count(1)


def fresh_ip(v6: bool = False) -> str:
    """A client address no other test uses (the tests share one LAPI)."""
    n = next(_n)
    return f"2001:db8:77::{n:x}" if v6 else f"203.0.113.{n}"



@pytest.fixture(scope="module", params=["stream", "live"])
def node(request: pytest.FixtureRequest, lapi: CrowdSec,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    mode = request.param
    args = ["--mode", mode, "--update-frequency", "0.5", "--cache-ttl", "1"]
    n = Node(tmp_path_factory.mktemp(mode), lapi, f"milter-{mode}", *args)
    yield n
    n.stop()


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_ip_ban_rejected_then_delete_lets_it_through(node: Node, lapi: CrowdSec,
                                                      v6: bool) -> None:
    ip = fresh_ip(v6)
    assert delivered(node.send(ip))
    lapi.add_decision(ip=ip)
    assert eventually(lambda: blocked(node.send(ip))), node.send(ip).text()
    t = node.send(ip)
    assert "554" in t.text() or t.code("MAIL") == 550  # Postfix's own refusal, then ours
    other = fresh_ip(v6)
    assert delivered(node.send(other))
    lapi.delete_decisions(ip=ip)
    assert eventually(lambda: delivered(node.send(ip))), node.send(ip).text()


@pytest.mark.parametrize(("cidr", "inside", "outside"), [
    ("198.51.100.0/24", "198.51.100.77", "198.51.101.1"),
    ("2001:db8:bad::/48", "2001:db8:bad:1::25", "2001:db8:bae::1"),
])
def test_range_ban_covers_its_addresses_only(node: Node, lapi: CrowdSec, cidr: str,
                                             inside: str, outside: str) -> None:
    lapi.add_decision(range_=cidr)
    try:
        assert eventually(lambda: blocked(node.send(inside)))
        assert delivered(node.send(outside))
    finally:
        lapi.delete_decisions(range_=cidr)


def test_captcha_is_tempfailed(node: Node, lapi: CrowdSec) -> None:
    ip = fresh_ip()
    lapi.add_decision(ip=ip, type_="captcha")
    assert eventually(lambda: node.send(ip).code("MAIL") == 451)
    assert "temporarily blocked by CrowdSec" in node.send(ip).text()


def test_ban_does_not_touch_string_neighbours(node: Node, lapi: CrowdSec) -> None:
    lapi.add_decision(ip="1.2.3.4")
    assert eventually(lambda: blocked(node.send("1.2.3.4")))
    for neighbour in ("11.2.3.45", "1.2.3.40", "21.2.3.4"):
        assert delivered(node.send(neighbour)), neighbour


def test_decision_expiry_lets_the_client_back(node: Node, lapi: CrowdSec) -> None:
    ip = fresh_ip()
    lapi.add_decision(ip=ip, duration="4s")
    assert eventually(lambda: blocked(node.send(ip)), timeout=3)
    assert eventually(lambda: delivered(node.send(ip)), timeout=8)


def test_trusted_loopback_is_never_blocked(node: Node, lapi: CrowdSec) -> None:
    control = fresh_ip()
    # Live mode caches answers: this session leaves the control and the loopback peer (every
    # session through Postfix starts from 127.0.0.1) cached as clean, at the same moment.
    assert delivered(node.send(control))
    lapi.add_decision(ip="127.0.0.1")
    lapi.add_decision(ip=control)
    try:
        # stream: the control was pulled, so was the loopback ban added before it; live:
        # the clean answers cached before the bans have expired
        assert eventually(lambda: blocked(node.send(control)))
        assert delivered(node.send("127.0.0.1"))
    finally:
        lapi.delete_decisions(ip="127.0.0.1")
        lapi.delete_decisions(ip=control)


def test_helo_stage_drop_disconnects_with_421(lapi: CrowdSec, tmp_path: Path) -> None:
    n = Node(tmp_path, lapi, "milter-drop", "--stage", "helo", "--action", "ban=drop",
             "--update-frequency", "0.5")
    try:
        ip = fresh_ip()
        lapi.add_decision(ip=ip)
        assert eventually(lambda: n.send(ip).closed)
        t = n.send(ip)
        assert t.closed and ("EHLO", 421) in [(c, code) for c, code, _ in t.replies]
        assert "closing connection" in t.text()
        assert delivered(n.send(fresh_ip()))
    finally:
        n.stop()


def test_rcpt_stage_rejects_recipients_but_postmaster(lapi: CrowdSec, tmp_path: Path) -> None:
    n = Node(tmp_path, lapi, "milter-rcpt", "--stage", "rcpt", "--update-frequency", "0.5")
    try:
        ip = fresh_ip()
        lapi.add_decision(ip=ip)
        assert eventually(lambda: n.send(ip).rcpt_codes == [550])
        t = n.send(ip, ("postmaster@example.org", "alice@example.org"))
        assert t.rcpt_codes == [250, 550]
    finally:
        n.stop()
