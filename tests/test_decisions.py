"""Reading decisions from LAPI JSON: durations, scopes, values, and what gets refused."""

from __future__ import annotations

import pytest
from crowdsec_milter.decisions import DecisionError, parse_decision, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("4h", 14400.0),
        ("3h59m57s", 14397.0),
        ("9m59.72s", 599.72),
        ("500ms", 0.5),
        ("1h0m0.5s", 3600.5),
        ("-1.5s", -1.5),
        ("-3h2m1s", -10921.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("1.5h", 5400.0),
        ("2us", 2e-6),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "4", "h", "4x", "1h 2m", "--1s", "1h-2m", "abc", "1e3s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(DecisionError):
        parse_duration(text)


def item(**kw: object) -> dict:
    base = {"id": 7, "type": "ban", "scope": "Ip", "value": "192.0.2.1", "duration": "1h",
            "origin": "crowdsec", "scenario": "crowdsecurity/ssh-bf"}
    base.update(kw)
    return base


def test_expiry_is_receipt_time_plus_duration() -> None:
    parsed = parse_decision(item(duration="10m0.5s"), now=1000.0)
    assert parsed is not None
    decision, net = parsed
    assert decision.expires == pytest.approx(1600.5)
    assert (net.family, net.prefixlen, net.number) == (4, 32, 0xC0000201)
    assert decision.scope == "Ip" and decision.type == "ban"


@pytest.mark.parametrize("scope", ["Ip", "ip", "IP", "Range", "range", "RANGE"])
def test_scopes_are_case_insensitive(scope: str) -> None:
    value = "192.0.2.0/24" if scope.lower() == "range" else "192.0.2.1"
    assert parse_decision(item(scope=scope, value=value), 0.0) is not None


def test_other_scopes_are_ignored_not_errors() -> None:
    assert parse_decision(item(scope="Country", value="FR"), 0.0) is None
    assert parse_decision(item(scope="AS", value="12345"), 0.0) is None


def test_ipv4_mapped_ipv6_becomes_ipv4() -> None:
    parsed = parse_decision(item(value="::ffff:192.0.2.1"), 0.0)
    assert parsed is not None
    assert parsed[1] == parse_decision(item(), 0.0)[1]  # type: ignore[index]
    ranged = parse_decision(item(scope="Range", value="::ffff:192.0.2.0/120"), 0.0)
    assert ranged is not None and (ranged[1].family, ranged[1].prefixlen) == (4, 24)


def test_range_with_host_bits_is_taken_as_its_network() -> None:
    parsed = parse_decision(item(scope="Range", value="10.9.3.3/16"), 0.0)
    assert parsed is not None and parsed[1].number == 0x0A090000


@pytest.mark.parametrize(
    "bad",
    [
        item(value="not-an-ip"),
        item(value="1.2.3.4/33"),
        item(scope="Ip", value="1.2.3.0/24"),
        item(value="fe80::1%eth0"),
        item(value=None),
        item(value=12),
        item(id="7"),
        item(id=True),
        item(id=None),
        item(type=""),
        item(type=5),
        item(duration="forever"),
        item(duration=None),
        item(duration="876000h"),
        "a string",
        None,
        [1, 2],
    ],
)
def test_bad_decisions_raise_a_decision_error(bad: object) -> None:
    with pytest.raises(DecisionError):
        parse_decision(bad, 0.0)
