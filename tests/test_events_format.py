"""The exact text of an event line: field types, cuts with their byte counts, timestamps."""

from __future__ import annotations

import pytest
from crowdsec_milter.events import EVENT_VERSION, FIELD_LIMIT, clean_text, format_event, rfc3339
from eventschema import sample, validate_line


def test_an_event_line_exactly() -> None:
    """Field order as given after time, event and v; booleans and integers keep their JSON
    type; a missing value (None) is the empty string; a field cannot override time, event
    or v."""
    fields = sample("client_blocked", client_ip="192.0.2.1", helo="mx.\u00e9.example",
                    stage="rcpt", action="reject", enforced=True, decision_type="ban",
                    decision_scope="Ip", decision_value="192.0.2.1", scenario=None,
                    decision_id=42)
    line = format_event("client_blocked", fields | {"time": "x", "event": "x", "v": 7},
                        1700000000.25)
    assert line == (
        '{"time":"2023-11-14T22:13:20.250000Z","event":"client_blocked","v":3,'
        '"client_ip":"192.0.2.1","client_name":"","helo":"mx.\u00e9.example","mail_from":"",'
        '"rcpt":"","stage":"rcpt","action":"reject","enforced":true,"reason":"decision",'
        '"decision_type":"ban","decision_scope":"Ip","decision_value":"192.0.2.1",'
        '"scenario":"","origin":"","decision_id":42,"decision_until":"","mta":""}\n')
    doc = validate_line(line)
    assert doc["enforced"] is True and doc["decision_id"] == 42
    assert doc["v"] == EVENT_VERSION == 3


def test_false_is_json_false() -> None:
    line = format_event("rcpt_trap", sample("rcpt_trap", client_ip="192.0.2.1",
                                            accepted=False), 0.0)
    assert line.endswith('"mta":"","accepted":false}\n')
    assert validate_line(line)["accepted"] is False


def test_line_separators_are_escaped_in_the_line() -> None:
    line = format_event("rcpt_rejected",
                        sample("rcpt_rejected", mta="a\u2028b\u2029c\x85d"), 0.0)
    assert line.endswith('"mta":"a\\u2028b\\u2029c\\u0085d"}\n')
    assert len(line.splitlines()) == 1
    assert validate_line(line)["mta"] == "a\u2028b\u2029c\x85d"


@pytest.mark.parametrize(("timestamp", "text"), [
    (0.0, "1970-01-01T00:00:00.000000Z"),
    (3.5, "1970-01-01T00:00:03.500000Z"),
    (0.9999995, "1970-01-01T00:00:00.999999Z"),  # never rounded into the next second
    (86399.5, "1970-01-01T23:59:59.500000Z"),
])
def test_rfc3339(timestamp: float, text: str) -> None:
    assert rfc3339(timestamp) == text


def test_long_ascii_is_cut_with_the_count() -> None:
    assert clean_text("a" * (FIELD_LIMIT + 7)) == "a" * FIELD_LIMIT + "...[cut 7 bytes]"
    assert clean_text("b" * FIELD_LIMIT) == "b" * FIELD_LIMIT
    assert clean_text("abcdef", limit=3) == "abc...[cut 3 bytes]"


def test_long_text_is_cut_on_a_character_boundary() -> None:
    # 3-byte characters: 512 bytes end inside the 171st, which is dropped whole.
    assert clean_text("€" * 200) == "€" * 170 + "...[cut 90 bytes]"


def test_non_ascii_of_exactly_the_limit_is_kept() -> None:
    text = "é" * (FIELD_LIMIT // 2)
    assert clean_text(text) == text


def test_lone_surrogates_and_bad_bytes_are_escaped_not_fatal() -> None:
    # A lone surrogate (not from surrogateescape) in a long value: escaped while cutting.
    assert clean_text("\ud800" + "a" * 600) == "\\ud800" + "a" * 506 + "...[cut 94 bytes]"
    assert clean_text(b"ok\xff\xc3") == "ok\\xff\\xc3"
    assert clean_text(None) == ""


def test_a_field_named_like_a_header_field_leaves_it_and_the_rest_alone() -> None:
    line = format_event("verdict", {"ip": "192.0.2.1", "time": "x", "v": 99, "event": "y",
                                    "action": "reject"}, 0.0)
    assert line == ('{"time":"1970-01-01T00:00:00.000000Z","event":"verdict",'
                    f'"v":{EVENT_VERSION},"ip":"192.0.2.1","action":"reject"}}\n')
