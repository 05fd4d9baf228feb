"""The shipped CrowdSec content (conf/crowdsec) on its own: recorded event lines replayed
through a real CrowdSec (replay mode) with our parser and scenarios, alerts asserted."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from crowdsec_milter.events import EVENT_VERSION, format_event
from eventschema import sample, validate_line
from real_crowdsec import CrowdSec, replayed_alerts

pytestmark = pytest.mark.integration

UNKNOWN = ("5.1.1", "Recipient address rejected: User unknown in local recipient table")
RELAY = ("5.7.1", "Relay access denied")


def line(ip: str, rcpt: str, kind: tuple[str, str], at: float) -> str:
    text = format_event("rcpt_rejected", {
        "client_ip": ip, "client_name": "unknown", "helo": "probe", "mail_from": "<x@y>",
        "rcpt": rcpt, "status": kind[0], "reason": kind[1], "queue_id": "", "mta": "mx1"}, at)
    validate_line(text)
    return text


def replay(tmp_path: Path, lines: list[str]) -> dict[str, set[str]]:
    """Scenario names that fired, by source address."""
    fired: dict[str, set[str]] = {}
    for alert in replayed_alerts(tmp_path, lines):
        fired.setdefault(alert["source"]["value"], set()).add(alert["scenario"])
    return fired


def test_dictionary_attacks_and_relay_probes_are_detected(tmp_path: Path) -> None:
    t = time.time() - 7200
    lines = []
    # fast harvester: 20 distinct unknown users in 20 seconds
    lines += [line("198.51.100.7", f"<guess{i}@example.org>", UNKNOWN, t + i) for i in range(20)]
    # slow harvester: 60 distinct unknown users, one a minute
    lines += [line("198.51.100.8", f"<slow{i}@example.org>", UNKNOWN, t + 60 * i)
              for i in range(60)]
    # relay prober: 6 foreign recipients
    lines += [line("198.51.100.9", f"<victim{i}@foreign{i}.net>", RELAY, t + 5 * i)
              for i in range(6)]
    # a legitimate sender with typos and a stale list: few distinct misses, retried often
    lines += [line("192.0.2.50", f"<old{i % 3}@example.org>", UNKNOWN, t + 30 * i)
              for i in range(30)]
    # a phone without SMTP AUTH retrying its one foreign recipient
    lines += [line("192.0.2.51", "<friend@foreign.net>", RELAY, t + 60 * i) for i in range(10)]
    lines.sort(key=lambda x: x[9:36])  # by time, as an event log is
    fired = replay(tmp_path, lines)
    assert "crowdsec-milter/dictionary-attack" in fired.get("198.51.100.7", set())
    assert "crowdsec-milter/dictionary-attack-slow" in fired.get("198.51.100.8", set())
    assert "crowdsec-milter/dictionary-attack" not in fired.get("198.51.100.8", set())
    assert fired.get("198.51.100.9") == {"crowdsec-milter/relay-probe"}
    assert "192.0.2.50" not in fired and "192.0.2.51" not in fired


def test_hostile_recipients_cannot_frame_another_address(tmp_path: Path) -> None:
    t = time.time() - 600
    hostile = [
        '<x","client_ip":"192.0.2.99@example.org>',
        '<x\\",\\"client_ip\\":\\"192.0.2.99@example.org>',
        "<a\r\n{\"event\":\"rcpt_rejected\",\"client_ip\":\"192.0.2.99\"}@example.org>",
        "<192.0.2.99@example.org>",
    ]
    lines = [line("198.51.100.20", f"{h[:-1]}{i}>", UNKNOWN, t + i)
             for i in range(20) for h in hostile[i % 4: i % 4 + 1]]
    fired = replay(tmp_path, lines)
    assert "192.0.2.99" not in fired
    assert "crowdsec-milter/dictionary-attack" in fired.get("198.51.100.20", set())


def trap_line(ip: str, rcpt: str, accepted: bool, at: float) -> str:
    rejected = ("", "") if accepted else UNKNOWN
    text = format_event("rcpt_trap", sample(
        "rcpt_trap", client_ip=ip, client_name="unknown", helo="probe", mail_from="<x@y>",
        rcpt=rcpt, status=rejected[0], reason=rejected[1], mta="mx1", accepted=accepted), at)
    validate_line(text)
    return text


def test_one_trap_hit_bans_whatever_the_mta_answered(tmp_path: Path) -> None:
    t = time.time() - 600
    lines = [
        # a trap mailbox that exists: the MTA accepted it
        trap_line("198.51.100.30", "<trap@example.org>", True, t),
        # a trap that is an unknown user: the milter writes both lines
        line("198.51.100.31", "<harvest-me@example.org>", UNKNOWN, t + 1),
        trap_line("198.51.100.31", "<harvest-me@example.org>", False, t + 1),
        # an ordinary miss is no trap hit
        line("192.0.2.60", "<bbo@example.org>", UNKNOWN, t + 2),
    ]
    assert '"accepted":true' in lines[0] and '"accepted":false' in lines[2]
    fired = replay(tmp_path, lines)
    assert fired.get("198.51.100.30") == {"crowdsec-milter/spam-trap"}
    assert fired.get("198.51.100.31") == {"crowdsec-milter/spam-trap"}
    assert "192.0.2.60" not in fired


def explained(workdir: Path, log: Path) -> tuple[str, list[dict[str, str]]]:
    """`cscli explain` of every line of `log` on a fresh CrowdSec: its text, and the Meta
    fields the parsers set for each line."""
    cs = CrowdSec(workdir).start()
    try:
        out = cs.explain(log)
    finally:
        cs.stop()
    return out, [dict(re.findall(r"create evt\.Meta\.(\w+) : (.*)", block))
                 for block in out.split("line: ")[1:]]


def test_trap_lines_reach_crowdsec_with_what_the_mta_answered(tmp_path: Path) -> None:
    t = time.time() - 60
    log = tmp_path / "events.log"
    log.write_text(trap_line("198.51.100.32", "<trap@example.org>", True, t)
                   + trap_line("198.51.100.33", "<spamtrap-1@example.org>", False, t + 1))
    out, metas = explained(tmp_path / "cs", log)
    assert sorted((m.get("source_ip"), m.get("log_type"), m.get("rcpt_accepted"))
                  for m in metas) == [("198.51.100.32", "smtp_rcpt_trap", "true"),
                                ("198.51.100.33", "smtp_rcpt_trap", "false")], out


def test_typed_fields_reach_crowdsec_as_their_json_text(tmp_path: Path) -> None:
    """This CrowdSec's JsonExtract (1.4.6 on Debian 12) hands a boolean over as the text
    true/false and a number as its digits: the parser's enforced and event_version metas
    read them so, and a HELO that spells them cannot set them."""
    t = time.time() - 60
    cases = [("203.0.113.21", True, "mx.example"),
             ("203.0.113.22", False, 'x","enforced":true,"v":9,"client_ip":"192.0.2.99')]
    lines = [format_event("client_blocked", sample("client_blocked", client_ip=ip, helo=helo,
                                                   action="reject", enforced=enforced), t + i)
             for i, (ip, enforced, helo) in enumerate(cases)]
    lines.append(line("203.0.113.23", "<a@example.org>", UNKNOWN, t + 5))
    for text in lines:
        validate_line(text)
    log = tmp_path / "events.log"
    log.write_text("".join(lines))
    out, metas = explained(tmp_path / "cs", log)
    # cscli explain may print the lines in any order
    assert sorted((m.get("source_ip"), m.get("log_type"), m.get("enforced"),
                   m.get("event_version")) for m in metas) == [
        ("203.0.113.21", "smtp_client_blocked", "true", str(EVENT_VERSION)),
        ("203.0.113.22", "smtp_client_blocked", "false", str(EVENT_VERSION)),
        ("203.0.113.23", "smtp_rcpt_rejected", None, str(EVENT_VERSION)),  # no enforced here
    ], out
