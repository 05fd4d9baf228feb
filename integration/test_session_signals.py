"""The sensor's session signals through real Postfix and CrowdSec 1.4.6: forged HELO,
spoofed local senders, recipient fan-out and logins become events; the shipped scenarios
ban the first three's senders and lock a roaming login, which the milter then refuses."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mmdb
import pytest
from eventschema import read_events
from milter_process import MilterProcess
from real_crowdsec import CrowdSec
from real_postfix import Postfix, Transcript, blocked, delivered, session
from waiting import eventually

pytestmark = pytest.mark.integration

MTA = "mx1.example"
# The tests' own MaxMind databases: three countries for the roaming login
PLACES = {"198.51.100.0/24": ("FR", 64500), "192.0.2.0/24": ("DE", 64501),
          "203.0.113.0/24": ("BR", 64502)}


class Node:
    """Postfix + the milter with the session signals on, its event log read by `cs`."""

    def __init__(self, workdir: Path, cs: CrowdSec, *args: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        country, asn = mmdb.write(workdir, PLACES)
        self.milter = MilterProcess(
            workdir, cs.lapi_url, cs.add_bouncer(f"signals-{workdir.name}"),
            "--update-frequency", "1", "--local-domains", "example.org",
            "--fanout-limit", "5", "--fanout-domains", "2", "--account-decisions",
            "--geoip-country-db", str(country), "--geoip-asn-db", str(asn), *args)
        self.milter.events.touch()
        self.milter.start("decision(s) held" if "live" not in args else None)
        self.postfix = Postfix(workdir / "postfix", f"inet:127.0.0.1:{self.milter.port}",
                               hostname=MTA).start()

    def send(self, ip: str, **kw: object) -> Transcript:
        kw.setdefault("rcpts", ["bob@example.org"])
        return session(self.postfix.port, ip, **kw)  # type: ignore[arg-type]

    def events(self, name: str | None = None) -> list[dict]:
        return [e for e in read_events(self.milter.events) if name in (None, e["event"])]

    def stop(self) -> None:
        self.postfix.stop()
        self.milter.stop(signal.SIGKILL)


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[CrowdSec, Node]]:
    """A CrowdSec agent + LAPI reading the node's event log with the shipped content."""
    events = tmp_path / "node" / "events.log"
    events.parent.mkdir(parents=True)
    events.touch()
    cs = CrowdSec(tmp_path / "cs").start(acquis=events)
    node = Node(tmp_path / "node", cs)
    yield cs, node
    node.stop()
    cs.stop()


def test_each_signal_is_one_typed_event_and_a_clean_session_writes_none(loop) -> None:
    _, node = loop
    # a clean session: its own address literal, a foreign sender, few recipients, no login
    assert delivered(node.send("203.0.113.9", helo="[203.0.113.9]"))
    assert delivered(node.send("203.0.113.10", helo="mail.example.com",
                               mail_from="news@example.com"))
    for ip, helo in (("198.51.100.40", MTA), ("198.51.100.41", "example.org"),
                     ("198.51.100.42", "[127.0.0.1]"), ("198.51.100.43", "[192.0.2.200]")):
        assert delivered(node.send(ip, helo=helo))  # the sensor never changes an answer
    node.send("198.51.100.44", helo="spoofer.example.net", mail_from="ceo@example.org")
    node.send("198.51.100.45", helo="bulk.example.net", rcpts=["bob@example.org"] * 7)
    node.send("198.51.100.46", helo="laptop", mail_from="alice@example.org", login="alice")
    assert eventually(lambda: len(node.events()) >= 7, timeout=10), node.events()
    by_ip = {e["client_ip"]: e for e in node.events()}
    assert {ip: e["event"] for ip, e in by_ip.items()} == {
        "198.51.100.40": "helo_forged", "198.51.100.41": "helo_forged",
        "198.51.100.42": "helo_forged", "198.51.100.43": "helo_forged",
        "198.51.100.44": "sender_spoofed", "198.51.100.45": "rcpt_fanout",
        "198.51.100.46": "auth_session"}
    assert [by_ip[f"198.51.100.4{i}"]["forged"] for i in range(4)] == [
        "mta_name", "local_domain", "mta_address", "foreign_literal"]
    assert by_ip["198.51.100.40"]["mta"] == MTA
    assert by_ip["198.51.100.44"]["mail_from"] == "<ceo@example.org>"
    fanout = by_ip["198.51.100.45"]
    assert (fanout["recipients"], fanout["domains"], fanout["recipient_limit"]) == (7, 1, 5)
    auth = by_ip["198.51.100.46"]
    assert (auth["user"], auth["auth_type"], auth["country"], auth["asn"]) == \
        ("alice", "XCLIENT", "FR", "64500")


def test_hostile_helo_and_login_stay_inside_their_fields(loop) -> None:
    _, node = loop
    node.send("198.51.100.47", helo=MTA + "x" * 900)  # Postfix cuts HELO, we cut more
    # XCLIENT takes xtext: +0D+0A is CR LF, +22 a quote
    node.send("198.51.100.48", login='eve+0D+0A{+22event+22:+22auth_session+22}')
    assert eventually(lambda: node.events("auth_session"), timeout=10)
    events = node.events()
    assert [e["event"] for e in events] == ["auth_session"], events
    # Postfix hands control characters over as '?'; the quotes stay inside the value
    assert events[0]["user"] == 'eve??{"event":"auth_session"}'
    assert events[0]["client_ip"] == "198.51.100.48"


def timed_ban(cs: CrowdSec, node: Node, ip: str, act: Callable[[], None],
              capsys: pytest.CaptureFixture[str], what: str) -> None:
    """`act` (the probes), then wait for the ban and the milter's rejection; print the
    loop's time as the other loop tests do."""
    assert not blocked(node.send(ip))
    started = time.monotonic()
    act()
    assert eventually(lambda: blocked(node.send(ip)), timeout=25, step=0.25), cs.log_tail()
    took = time.monotonic() - started
    scenarios = {d["scenario"] for d in cs.decisions() if d["value"] == ip}
    assert scenarios == {f"crowdsec-milter/{what}"}
    with capsys.disabled():
        print(f"\n  {what} loop: first session to first rejection {took:.1f} s")


def test_a_forged_helo_gets_the_client_banned_and_rejected(loop, capsys) -> None:
    cs, node = loop
    ip = "198.51.100.50"
    timed_ban(cs, node, ip, lambda: [node.send(ip, helo=MTA) for _ in range(3)], capsys,
              "helo-forged")


def test_a_spoofed_local_sender_gets_the_client_banned_and_rejected(loop, capsys) -> None:
    cs, node = loop
    ip = "198.51.100.51"
    timed_ban(cs, node, ip,
              lambda: [node.send(ip, mail_from="ceo@example.org") for _ in range(5)],
              capsys, "sender-spoofed")


def test_a_fanning_out_client_gets_banned_and_rejected(loop, capsys) -> None:
    cs, node = loop
    ip = "198.51.100.52"
    timed_ban(cs, node, ip,
              lambda: [node.send(ip, rcpts=["bob@example.org"] * 6) for _ in range(3)],
              capsys, "rcpt-fanout")


def locked(t: Transcript) -> bool:
    return t.code("MAIL") == 550 and "account alice is locked by CrowdSec" in t.text() \
        and "contact the postmaster" in t.text()


def test_a_roaming_login_is_locked_and_refused_from_a_clean_address(loop, capsys) -> None:
    cs, node = loop
    clean = "192.0.2.99"
    assert delivered(node.send(clean, login="alice"))
    started = time.monotonic()
    for ip in ("198.51.100.60", "192.0.2.60", "203.0.113.60"):  # FR, DE, BR
        assert delivered(node.send(ip, login="alice"))
    assert eventually(lambda: locked(node.send(clean, login="alice")), timeout=25,
                      step=0.25), cs.log_tail()
    took = time.monotonic() - started
    with capsys.disabled():
        print(f"\n  account-roaming loop: first login abroad to the lock {took:.1f} s")
    decisions = [(d["scope"], d["value"], d["scenario"]) for d in cs.decisions()]
    assert ("username", "alice", "crowdsec-milter/account-roaming") in decisions
    assert not [d for d in decisions if d[0] == "Ip"]  # the login, not an address
    assert delivered(node.send(clean, login="bob"))
    assert delivered(node.send(clean))
    blocks = [e for e in node.events("client_blocked") if e["decision_scope"] == "username"]
    assert blocks and blocks[0]["decision_value"] == "alice" and blocks[0]["stage"] == "mail"


@pytest.mark.parametrize("mode", [("--mode", "stream"), ("--mode", "live", "--cache-ttl", "1")],
                         ids=["stream", "live"])
def test_an_account_decision_locks_the_login_until_deleted(tmp_path: Path,
                                                           mode: tuple[str, ...]) -> None:
    cs = CrowdSec(tmp_path / "cs").start()
    node = Node(tmp_path / "node", cs, *mode)
    try:
        clean = "192.0.2.98"
        assert delivered(node.send(clean, login="alice"))
        cs.cscli("decisions", "add", "--scope", "username", "--value", "alice",
                 "--duration", "10m", "--reason", "integration test")
        assert eventually(lambda: locked(node.send(clean, login="alice")), timeout=10)
        assert delivered(node.send(clean, login="bob"))
        # cscli 1.4.6 deletes by id only for this scope
        ids = [d["id"] for d in cs.decisions() if d["scope"] == "username"]
        assert ids
        for ident in ids:
            cs.cscli("decisions", "delete", "--id", str(ident))
        assert eventually(lambda: delivered(node.send(clean, login="alice")), timeout=10)
    finally:
        node.stop()
        cs.stop()
