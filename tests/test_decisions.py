"""Reading decisions from LAPI JSON: durations, scopes, values, and what gets refused."""

from __future__ import annotations

import pytest
from crowdsec_milter.decisions import DecisionError, parse_decision, parse_duration
from hypothesis import given, settings
from hypothesis import strategies as st


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
        item(duration="-5s"),  # already expired: nothing to enforce
        item(duration="-3h2m1s"),
        "a string",
        None,
        [1, 2],
    ],
)
def test_bad_decisions_raise_a_decision_error(bad: object) -> None:
    with pytest.raises(DecisionError):
        parse_decision(bad, 0.0)


fast_items = st.fixed_dictionaries({
    "id": st.integers(-5, 2**65),
    "scope": st.sampled_from(["Ip", "ip", "Range"]),
    "value": st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
                       st.sampled_from(["1.2.3.4/32", "not-an-ip", "010.1.1.1", ""])),
    "type": st.sampled_from(["ban", "BAN", "captcha", "", 5]),
    "duration": st.sampled_from(["4h", "3h59m57.5s", "9m59.72s", "500ms", "-1s", "0",
                                 "876000h", "1h2m", "x"]),
    "origin": st.sampled_from(["crowdsec", "CAPI", "o" * 70, None]),
    "scenario": st.sampled_from(["s", "lists:x", "s" * 300, None]),
})


@settings(max_examples=400, deadline=None)
@given(items=st.lists(fast_items, max_size=12))
def test_startup_fast_path_builds_the_same_index_as_the_general_path(items) -> None:
    from crowdsec_milter.index import DecisionIndex
    from crowdsec_milter.source import _add, _Counter

    fast, slow = DecisionIndex(private=True), DecisionIndex()
    for i, item in enumerate(items):
        item = {**item, "id": item["id"] * 64 + i}  # distinct ids, both sides of 2**64
        _add(item, 100.0, fast, _Counter())
        try:
            parsed = parse_decision(item, 100.0)
        except DecisionError:
            continue
        if parsed is not None:
            slow.add(*parsed)
    assert sorted(fast.decisions()) == sorted(slow.decisions())
    assert len(fast) == len(slow)
