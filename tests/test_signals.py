"""The sensor's session signals: the pure classifiers, then the session writing them."""

from __future__ import annotations

from pathlib import Path

import Milter
import pytest
from crowdsec_milter.policy import Stage
from crowdsec_milter.signals import (
    FOREIGN_LITERAL,
    LOCAL_DOMAIN,
    MTA_ADDRESS,
    MTA_NAME,
    Fanout,
    address_domain,
    helo_forged,
    sender_spoofed,
)
from eventschema import read_events
from helpers import IndexSource, ctx_for, make, started_writer

OURS = frozenset({"example.org", "example.net"})
MTA_ADDRS = ("192.0.2.25", "")


@pytest.mark.parametrize(("helo", "expected"), [
    ("mx1.example.org", MTA_NAME),
    ("MX1.Example.ORG.", MTA_NAME),
    ("example.org", LOCAL_DOMAIN),
    ("Example.NET", LOCAL_DOMAIN),
    ("[192.0.2.25]", MTA_ADDRESS),
    ("192.0.2.25", MTA_ADDRESS),
    ("[198.51.100.1]", FOREIGN_LITERAL),
    ("[IPv6:2001:db8::1]", FOREIGN_LITERAL),
    ("[203.0.113.5]", ""),  # the client's own address: honest
    ("203.0.113.5", ""),
    ("[IPv6:::ffff:203.0.113.5]", ""),  # the same address, IPv4-mapped
    ("mail.example.com", ""),
    ("sub.example.org", ""),  # a host in our domain is not the domain itself
    ("", ""),
    ("[not an address]", ""),
])
def test_helo_forged_names_how(helo: str, expected: str) -> None:
    assert helo_forged(helo, "203.0.113.5", "mx1.example.org", OURS, MTA_ADDRS) == expected


def test_helo_forged_on_ipv6_and_without_an_mta_name() -> None:
    assert helo_forged("[IPv6:2001:db8::5]", "2001:db8::5", "", OURS, ()) == ""
    assert helo_forged("[IPv6:2001:DB8:0::5]", "2001:db8::5", "", OURS, ()) == ""
    assert helo_forged("[IPv6:2001:db8::6]", "2001:db8::5", "", OURS, ()) == FOREIGN_LITERAL
    assert helo_forged("[IPv6:2001:db8::25]", "2001:db8::5", "", OURS,
                       ("2001:db8::25",)) == MTA_ADDRESS
    assert helo_forged("mx1.example.org", "2001:db8::5", "", frozenset(), ()) == ""
    # no client address to compare a literal with: not called foreign
    assert helo_forged("[198.51.100.1]", "", "", OURS, ()) == ""


@pytest.mark.parametrize(("address", "domain"), [
    ("<ceo@Example.ORG.>", "example.org"),
    ("ceo@example.org", "example.org"),
    ('<"a@b"@example.net>', "example.net"),
    ("<@relay.example.com:ceo@example.org>", "example.org"),
    ("<>", ""),
    ("<postmaster>", ""),
])
def test_address_domain(address: str, domain: str) -> None:
    assert address_domain(address) == domain


def test_sender_spoofed_only_for_our_domains() -> None:
    assert sender_spoofed("<ceo@EXAMPLE.org>", OURS)
    assert not sender_spoofed("<ceo@sub.example.org>", OURS)
    assert not sender_spoofed("<>", OURS)
    assert not sender_spoofed("<ceo@example.org>", frozenset())


def test_fanout_counts_recipients_and_distinct_domains() -> None:
    fanout = Fanout()
    for rcpt in ("<a@x.example>", "<b@X.example.>", "<c@y.example>", "<postmaster>"):
        fanout.add(rcpt)
    assert (fanout.recipients, fanout.domains) == (4, {"x.example", "y.example"})
    assert fanout.exceeds(3, 0) and not fanout.exceeds(4, 0)
    assert fanout.exceeds(0, 1) and not fanout.exceeds(0, 2)
    assert not fanout.exceeds(0, 0)


# -- through the session ------------------------------------------------------------------

def session(tmp_path: Path, **context: object):
    writer = started_writer(tmp_path / "events.log")
    ctx = ctx_for(Stage.CONNECT, make(IndexSource()), writer)
    for name, value in context.items():
        setattr(Milter.factory.context, name, value)  # type: ignore[attr-defined]
    ctx._setsymval("j", "mx1.example.org")
    ctx._setsymval("{daemon_addr}", "192.0.2.25")
    return ctx, writer


def test_forged_helo_and_spoofed_sender_are_written_once(tmp_path: Path) -> None:
    ctx, writer = session(tmp_path, local_domains=OURS)
    assert ctx._connect(ip="203.0.113.5", helo="mx1.example.org") == Milter.CONTINUE
    for _ in range(2):  # two transactions: helo_forged once, sender_spoofed each time
        ctx._setsymval("{mail_addr}", "ceo@example.org")
        for rcpt in ("<a@example.org>", "<b@example.org>"):
            assert ctx._envrcpt(rcpt) == Milter.CONTINUE
        assert ctx._data() == Milter.ACCEPT
    writer.stop()
    events = read_events(tmp_path / "events.log")
    assert [e["event"] for e in events] == ["helo_forged", "sender_spoofed", "sender_spoofed"]
    assert events[0]["forged"] == MTA_NAME
    assert {(e["client_ip"], e["helo"], e["mail_from"]) for e in events} == {
        ("203.0.113.5", "mx1.example.org", "<ceo@example.org>")}


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
def test_trusted_clients_are_not_watched(tmp_path: Path, ip: str) -> None:
    ctx, writer = session(tmp_path, local_domains=OURS, fanout_limit=1)
    assert ctx._connect(ip=ip, helo="mx1.example.org") == Milter.CONTINUE
    ctx._setsymval("{mail_addr}", "ceo@example.org")
    ctx._envrcpt("<a@example.org>")
    ctx._envrcpt("<b@example.org>")
    ctx._data()
    writer.stop()
    assert read_events(tmp_path / "events.log") == []


def test_a_clean_session_writes_nothing(tmp_path: Path) -> None:
    """HELO with the client's own literal, a foreign sender, few recipients, no login."""
    ctx, writer = session(tmp_path, local_domains=OURS, fanout_limit=3, fanout_domains=1)
    assert ctx._connect(ip="203.0.113.5", helo="[203.0.113.5]") == Milter.CONTINUE
    ctx._setsymval("{mail_addr}", "news@example.com")
    for rcpt in ("<a@example.org>", "<b@example.org>", "<c@example.org>"):
        ctx._envrcpt(rcpt)
    ctx._data()
    writer.stop()
    assert read_events(tmp_path / "events.log") == []


def test_fanout_is_one_event_a_transaction_with_its_counts(tmp_path: Path) -> None:
    ctx, writer = session(tmp_path, fanout_limit=3, fanout_domains=2)
    assert ctx._connect(ip="203.0.113.5") == Milter.CONTINUE
    ctx._setsymval("{mail_addr}", "a@example.com")
    for n in range(5):
        ctx._envrcpt(f"<u{n}@example.org>")
    ctx._data()  # 5 recipients, one domain: past the recipient limit
    for domain in ("a.example", "b.example", "c.example"):
        ctx._envrcpt(f"<u@{domain}>")
    ctx._priv.abort()  # RSET: 3 recipients, 3 domains: past the domain limit
    ctx._envrcpt("<u@a.example>")
    ctx._close()  # the end of the session: one recipient, nothing
    writer.stop()
    events = read_events(tmp_path / "events.log")
    assert [(e["event"], e["recipients"], e["domains"], e["recipient_limit"],
             e["domain_limit"]) for e in events] == [("rcpt_fanout", 5, 1, 3, 2),
                                                     ("rcpt_fanout", 3, 3, 3, 2)]


def test_an_authenticated_session_is_one_auth_session_event_and_nothing_else(
        tmp_path: Path) -> None:
    ctx, writer = session(tmp_path, local_domains=OURS, fanout_limit=1,
                          locate=lambda ip: ("FR", "64500") if ip == "203.0.113.80" else ("", ""))
    assert ctx._connect(ip="203.0.113.80", helo="mx1.example.org") == Milter.CONTINUE
    ctx._setsymval("{mail_addr}", "alice@example.org")
    ctx._setsymval("{auth_authen}", "alice")
    ctx._setsymval("{auth_type}", "PLAIN")
    for rcpt in ("<a@example.com>", "<b@example.com>", "<c@example.com>"):
        ctx._envrcpt(rcpt)
    ctx._data()
    writer.stop()
    events = read_events(tmp_path / "events.log")
    assert len(events) == 1
    assert {k: events[0][k] for k in ("event", "user", "auth_type", "country", "asn",
                                      "client_ip", "mail_from")} == {
        "event": "auth_session", "user": "alice", "auth_type": "PLAIN", "country": "FR",
        "asn": "64500", "client_ip": "203.0.113.80", "mail_from": "<alice@example.org>"}


def test_an_unauthenticated_session_writes_no_auth_session(tmp_path: Path) -> None:
    ctx, writer = session(tmp_path)
    assert ctx._connect(ip="203.0.113.80") == Milter.CONTINUE
    ctx._setsymval("{mail_addr}", "x@example.com")
    ctx._envrcpt("<a@example.org>")
    ctx._data()
    writer.stop()
    assert read_events(tmp_path / "events.log") == []


def test_hostile_session_values_stay_inside_their_fields(tmp_path: Path) -> None:
    user = 'al"ice\r\n{"event":"auth_session","user":"bob"}'
    ctx, writer = session(tmp_path, local_domains=OURS)
    helo = "mx1.example.org\r\n" + "x" * 10_000
    assert ctx._connect(ip="203.0.113.5", helo=helo) == Milter.CONTINUE
    ctx._setsymval("{mail_addr}", "x@example.com")
    ctx._envrcpt("<a@example.org>")
    ctx._connect(ip="203.0.113.81")  # a new client on the same connection (XCLIENT)
    ctx._setsymval("{auth_authen}", user)
    ctx._envrcpt("<a@example.org>")
    writer.stop()
    events = read_events(tmp_path / "events.log")
    assert [e["event"] for e in events] == ["auth_session"]  # the long HELO is no name of ours
    assert events[0]["user"] == user
