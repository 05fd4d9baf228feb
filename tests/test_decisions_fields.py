"""Decisions field by field: limits, what the error says, and the startup fast path's contract
(plain IPv4 Ip decisions taken in one step, anything else handed to the general parser)."""

from __future__ import annotations

import pytest
from crowdsec_milter.decisions import (
    MAX_DURATION,
    DecisionError,
    iso_expiry,
    network_text,
    normalize_scoped,
    parse_decision,
    parse_duration,
    parse_ipv4_fast,
    parse_network,
    parse_scoped_decision,
)


def item(**kw: object) -> dict:
    base = {"id": 7, "type": "ban", "scope": "Ip", "value": "192.0.2.1", "duration": "1h",
            "origin": "crowdsec", "scenario": "crowdsecurity/ssh-bf"}
    base.update(kw)
    return base


TEN_YEARS = f"{int(MAX_DURATION // 3600)}h"


@pytest.mark.parametrize(("text", "seconds"), [
    ("+1.5s", 1.5), ("+2h", 7200.0), ("1h30s", 3630.0), ("5m", 300.0), (TEN_YEARS, MAX_DURATION),
])
def test_more_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-", "+", "X1s", "x5m"])
def test_more_bad_durations(text: str) -> None:
    with pytest.raises(DecisionError, match=r"^duration is not a Go duration: "):
        parse_duration(text)


@pytest.mark.parametrize(("bad", "message"), [
    (item(value="not-an-ip"), "value is not an address or range: 'not-an-ip'"),
    (item(scope="Ip", value="1.2.3.0/24"), "Ip decision with a prefix: '1.2.3.0/24'"),
    (item(scope="Ip", value="1.2.3.5/24"), "Ip decision with a prefix: '1.2.3.5/24'"),
    (item(value="fe80::1%eth0"), "value carries an interface scope: 'fe80::1%eth0'"),
    (item(value=12), "value is not a string: 12"),
    (item(id="7"), "id is not an integer: '7'"),
    (item(type=""), "type is missing or not a string: ''"),
    (item(scope=5), "scope is not a string: 5"),
    (item(duration="forever"), "duration is not a Go duration: 'forever'"),
    (item(duration=""), "duration is not a Go duration: ''"),
    (item(duration="876000h"), "duration is absurd: '876000h'"),
    (item(origin=5), "origin is not a string: 5"),
    (item(scenario=["x"]), "scenario is not a string: ['x']"),
    ("a string", "decision is not an object: 'a string'"),
])
def test_the_error_names_the_field(bad: object, message: str) -> None:
    with pytest.raises(DecisionError) as info:
        parse_decision(bad, 0.0)
    assert str(info.value) == message


def test_a_missing_scope_is_ignored_not_an_error() -> None:
    without = item()
    del without["scope"]
    assert parse_decision(without, 0.0) is None


def test_fields_are_kept_and_cut_to_their_limits() -> None:
    parsed = parse_decision(item(type="B" * 70, origin="o" * 70, scenario="s" * 300,
                                 duration=TEN_YEARS), 5.0)
    assert parsed is not None
    d = parsed[0]
    assert (d.id, d.type, d.scope, d.value) == (7, "b" * 64, "Ip", "192.0.2.1")
    assert (d.origin, d.scenario, d.expires) == ("o" * 64, "s" * 256, 5.0 + MAX_DURATION)
    bare = parse_decision(item(origin=None, scenario=None), 0.0)
    assert bare is not None and (bare[0].origin, bare[0].scenario) == ("", "")


def test_ip_with_full_prefix_is_that_address() -> None:
    for value, number in (("1.2.3.4/32", 0x01020304), ("2001:db8::1/128", 0x20010DB8 << 96 | 1)):
        parsed = parse_decision(item(value=value), 0.0)
        assert parsed is not None and parsed[1].number == number and parsed[1].prefixlen in (
            32, 128)


@pytest.mark.parametrize(("value", "family", "prefixlen"), [
    ("::ffff:0.0.0.0/96", 4, 0), ("::ffff:10.0.0.0/104", 4, 8), ("::/95", 6, 95),
])
def test_mapped_ranges_become_ipv4_from_prefix_96(value: str, family: int,
                                                  prefixlen: int) -> None:
    parsed = parse_decision(item(scope="Range", value=value), 0.0)
    assert parsed is not None and (parsed[1].family, parsed[1].prefixlen) == (family, prefixlen)


def test_fast_path_reads_a_plain_ipv4_decision() -> None:
    assert parse_ipv4_fast(item(type="BAN"), 1000.0) == (
        7, 0xC0000201, ("ban", "Ip", "crowdsec", "crowdsecurity/ssh-bf"), 4600.0)


@pytest.mark.parametrize(("duration", "seconds"), [
    ("5m", 300.0), ("3s", 3.0), ("1h30s", 3630.0), ("2h5m0.5s", 7500.5), (TEN_YEARS, MAX_DURATION),
])
def test_fast_path_durations(duration: str, seconds: float) -> None:
    got = parse_ipv4_fast(item(duration=duration), 0.0)
    assert got is not None and got[3] == pytest.approx(seconds)


def test_fast_path_takes_fields_up_to_their_limits() -> None:
    got = parse_ipv4_fast(item(type="t" * 64, origin="o" * 64, scenario="s" * 256), 0.0)
    assert got is not None and got[2] == ("t" * 64, "Ip", "o" * 64, "s" * 256)


@pytest.mark.parametrize("changes", [
    {"scope": "ip"}, {"scope": "Range"}, {"id": "7"}, {"value": 5}, {"type": 5}, {"type": ""},
    {"duration": 5}, {"origin": None}, {"scenario": None}, {"type": "t" * 65},
    {"origin": "o" * 65}, {"scenario": "s" * 257}, {"value": "::1"}, {"value": "1.2.3.4/32"},
    {"duration": "500ms"}, {"duration": "-1s"}, {"duration": "0"}, {"duration": "876000h"},
])
def test_fast_path_hands_anything_else_to_the_general_parser(changes: dict) -> None:
    assert parse_ipv4_fast(item(**changes), 0.0) is None


def test_a_network_value_must_be_a_string() -> None:
    with pytest.raises(DecisionError) as info:
        parse_network("ip", 5)  # type: ignore[arg-type]
    assert str(info.value) == "value is not a string: 5"


@pytest.mark.parametrize(("scope", "value", "normal"), [
    ("Country", "fr", "FR"), ("Country", " De ", "DE"), ("Country", "FRA", None),
    ("Country", "F", None), ("Country", "f1", None), ("Country", "\u00e9\u00e9", None),
    ("Country", "", None),
    ("AS", "AS64500", "64500"), ("AS", "as64500", "64500"), ("AS", "As64500", "64500"),
    ("AS", "64500", "64500"), ("AS", " AS64500 ", "64500"), ("AS", "AS0064500", "64500"),
    ("AS", "4294967295", "4294967295"), ("AS", "12345678901", None), ("AS", "AS", None),
    ("AS", "x1", None), ("AS", "AS 1", None), ("AS", "\u0661\u0662", None), ("AS", "-1", None),
])
def test_country_and_as_values_are_compared_normalized(scope: str, value: str,
                                                       normal: str | None) -> None:
    assert normalize_scoped(scope, value) == normal


def test_a_country_or_as_decision_is_read_with_its_fields() -> None:
    got = parse_scoped_decision(item(id=3, type="Captcha", scope="country", value="fr",
                                     origin="o" * 70, scenario="s" * 300), 10.0)
    assert got is not None
    assert got == (3, "captcha", "Country", "FR", "o" * 64, "s" * 256, 3610.0)
    for scope in ("as", "AS", "As"):
        d = parse_scoped_decision(item(scope=scope, value="AS64500", origin=None,
                                       scenario=None), 0.0)
        assert d is not None and (d.scope, d.value, d.origin, d.scenario) == \
            ("AS", "64500", "", ""), scope
    for scope in ("Ip", "Range", "user", "session", None, 7):
        assert parse_scoped_decision(item(scope=scope), 0.0) is None, scope


def test_a_login_decision_is_read_with_its_value_as_spelled() -> None:
    """A username decision's value is compared exactly (logins are case-sensitive on most
    SASL backends); a scope spelled otherwise still reads as the one scope."""
    for scope in ("username", "Username"):
        got = parse_scoped_decision(item(id=9, scope=scope, value="Alice@Example.org"), 0.0)
        assert got is not None and (got.id, got.scope, got.value) == \
            (9, "username", "Alice@Example.org")
    for bad in ("", "a\r\nb", "x" * 257, "tab\there"):
        with pytest.raises(DecisionError, match="username decision value is not usable"):
            parse_scoped_decision(item(scope="username", value=bad), 0.0)
    assert normalize_scoped("username", " alice ") == " alice "


@pytest.mark.parametrize(("bad", "message"), [
    ("not a dict", "decision is not an object"),
    (item(scope="Country", value="France"), "Country decision value is not usable: 'France'"),
    (item(scope="AS", value=64500), "AS decision value is not usable: 64500"),
    (item(scope="Country", value="FR", id="7"), "id is not an integer"),
    (item(scope="Country", value="FR", type=""), "type is missing"),
    (item(scope="Country", value="FR", duration="-1s"),
     r"^duration is negative \(already expired\): '-1s'$"),
])
def test_an_unusable_country_or_as_decision_says_what_is_wrong(bad: object,
                                                                message: str) -> None:
    with pytest.raises(DecisionError, match=message):
        parse_scoped_decision(bad, 0.0)


def test_expiry_is_told_as_wall_clock_utc_to_the_second() -> None:
    # 100.9 s from a monotonic 1000 is 100.9 s after the wall clock's now
    assert iso_expiry(1100.9, 1000.0, 1_700_000_000.0) == "2023-11-14T22:15:00Z"
    assert iso_expiry(900.0, 1000.0, 1_700_000_000.0) == "2023-11-14T22:11:40Z"
    assert iso_expiry(0.0, 1000.0, 50.0) == "1970-01-01T00:00:00Z"  # never before the epoch


@pytest.mark.parametrize(("args", "text"), [
    ((4, 32, 0xC0000201, "Ip"), "192.0.2.1"), ((4, 32, 0xC0000201, "Range"), "192.0.2.1/32"),
    ((4, 24, 0xC0000200, "Range"), "192.0.2.0/24"),
    ((6, 128, 1, "Ip"), "::1"), ((6, 128, 1, "Range"), "::1/128"),
    ((6, 64, 0x20010DB8 << 96, "Range"), "2001:db8::/64"),
])
def test_a_value_is_shown_with_its_prefix_unless_an_ip_decision_on_one_address(
        args: tuple[int, int, int, str], text: str) -> None:
    assert network_text(*args) == text
