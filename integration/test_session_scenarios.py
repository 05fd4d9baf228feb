"""The session signals' scenarios (conf/crowdsec): recorded event lines replayed through a
real CrowdSec with our parser and scenarios, alerts and their decisions' scopes asserted."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from crowdsec_milter.events import format_event
from eventschema import sample, validate_line
from real_crowdsec import replayed_alerts

pytestmark = pytest.mark.integration


def event(name: str, at: float, **fields: Any) -> str:
    text = format_event(name, sample(name, client_name="unknown", mta="mx1.example.org",
                                     **fields), at)
    validate_line(text)
    return text


def replay(tmp_path: Path, lines: list[str]) -> dict[tuple[str, str], set[str]]:
    """Scenario names that fired, by the (scope, value) of their alert's source; each
    alert's decisions as "decision:TYPE:SCOPE:VALUE" beside them."""
    fired: dict[tuple[str, str], set[str]] = {}
    in_order = sorted(lines, key=lambda x: x[9:36])  # by time, as an event log is
    for alert in replayed_alerts(tmp_path, in_order):
        source = alert["source"]
        fired.setdefault((source["scope"], source["value"]), set()).update(
            [alert["scenario"]] + [f"decision:{d['type']}:{d['scope']}:{d['value']}"
                                   for d in alert.get("decisions") or []])
    return fired


def test_each_session_signal_bans_past_its_threshold_and_not_below(tmp_path: Path) -> None:
    t = time.time() - 7200
    lines = []
    # a bot greeting with our MTA's name on each of 3 connections
    lines += [event("helo_forged", t + 30 * i, client_ip="198.51.100.40",
                    helo="mx1.example.org", forged="mta_name") for i in range(3)]
    # a misconfigured host that did it twice
    lines += [event("helo_forged", t + 30 * i, client_ip="192.0.2.40", helo="example.org",
                    forged="local_domain") for i in range(2)]
    # CEO fraud: 6 messages "from" our CEO
    lines += [event("sender_spoofed", t + 20 * i, client_ip="198.51.100.41",
                    mail_from="<ceo@example.org>") for i in range(6)]
    # a forwarder bouncing back 3 of our users' messages in an hour
    lines += [event("sender_spoofed", t + 1200 * i, client_ip="192.0.2.41",
                    mail_from="<bob@example.org>") for i in range(3)]
    # a spammer: 4 batches of 80 recipients in 10 minutes
    lines += [event("rcpt_fanout", t + 150 * i, client_ip="198.51.100.42", recipients=80,
                    domains=1, recipient_limit=50, domain_limit=5) for i in range(4)]
    # a list server posting twice
    lines += [event("rcpt_fanout", t + 600 * i, client_ip="192.0.2.42", recipients=60,
                    domains=1, recipient_limit=50, domain_limit=5) for i in range(2)]
    fired = replay(tmp_path, lines)
    for ip, scenario in (("198.51.100.40", "helo-forged"), ("198.51.100.41", "sender-spoofed"),
                         ("198.51.100.42", "rcpt-fanout")):
        assert fired.get(("Ip", ip)) == {f"crowdsec-milter/{scenario}",
                                         f"decision:ban:Ip:{ip}"}
    assert not {ip for _, ip in fired} & {"192.0.2.40", "192.0.2.41", "192.0.2.42"}, fired


def test_a_login_roaming_across_countries_locks_the_account_not_an_address(
        tmp_path: Path) -> None:
    t = time.time() - 7200
    lines = []
    # alice's stolen password used from 4 countries within 40 minutes
    for i, (ip, country) in enumerate([("203.0.113.81", "FR"), ("198.51.100.82", "BR"),
                                       ("203.0.113.83", "VN"), ("198.51.100.84", "US")]):
        lines.append(event("auth_session", t + 600 * i, client_ip=ip, user="alice",
                           auth_type="PLAIN", country=country, asn="64500"))
    # bob: home and a trip, many sessions, 2 countries
    for i in range(12):
        lines.append(event("auth_session", t + 300 * i, client_ip=f"192.0.2.{90 + i % 2}",
                           user="bob", auth_type="PLAIN", country=("DE", "AT")[i % 2],
                           asn="64501"))
    # carol without a country database: addresses alone never count
    for i in range(6):
        lines.append(event("auth_session", t + 60 * i, client_ip=f"192.0.2.{100 + i}",
                           user="carol", auth_type="LOGIN", country="", asn=""))
    fired = replay(tmp_path, lines)
    # the shipped profile (conf/crowdsec/profiles) makes the alert a decision on the login
    assert fired == {("username", "alice"): {"crowdsec-milter/account-roaming",
                                             "decision:ban:username:alice"}}, fired
