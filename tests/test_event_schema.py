"""The published event format: lines keep their JSON types and conform to
conf/events.schema.json whatever the client sends; the README documents exactly the schema."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from crowdsec_milter.events import EVENT_VERSION, FIELD_LIMIT, _typed, clean_text, format_event
from eventschema import (
    README_BEGIN,
    README_END,
    SCHEMA,
    errors,
    event_names,
    fields_of,
    readme_section,
    sample,
    validate_line,
)
from hypothesis import given, settings
from hypothesis import strategies as st

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_event_format_is_the_schema() -> None:
    text = README.read_text()
    assert README_BEGIN in text and README_END in text, "README lacks the event tables"
    got = text[text.index(README_BEGIN):text.index(README_END) + len(README_END)]
    assert got == readme_section(), \
        "README's event tables differ from conf/events.schema.json: paste the output of " \
        "`.venv/bin/python tests/eventschema.py` between the markers"
    section = text[text.index("## Event format"):text.index(README_BEGIN)]
    examples = re.findall(r"```json\n(.*?)```", section, re.S)[0].splitlines()
    assert {validate_line(x)["event"] for x in examples} == set(event_names())
    content = (README.parent / "conf" / "crowdsec" / "README.md").read_text()
    for block in re.findall(r"```json\n(.*?)```", content, re.S):
        for example in block.splitlines():
            validate_line(example)


def test_version_is_in_every_line_and_in_the_schema() -> None:
    assert SCHEMA["$id"].endswith(f":v{EVENT_VERSION}")
    for event in event_names():
        assert fields_of(event)["v"] == {**fields_of(event)["v"], "const": EVENT_VERSION}
        assert validate_line(format_event(event, sample(event), 0.0))["v"] == EVENT_VERSION


def test_a_boolean_stays_a_boolean() -> None:
    """miltertest showed "enforced":"True": every non-number was turned into text."""
    for enforced in (True, False):
        line = format_event("client_blocked", sample("client_blocked", enforced=enforced), 0.0)
        assert validate_line(line)["enforced"] is enforced
        assert f'"enforced":{json.dumps(enforced)},' in line


def test_absent_values_are_the_empty_string() -> None:
    fields = sample("client_blocked", decision_type=None, scenario=None, origin=None)
    doc = validate_line(format_event("client_blocked", fields, 0.0))
    assert (doc["decision_type"], doc["scenario"], doc["origin"]) == ("", "", "")


@pytest.mark.parametrize(("value", "expected"), [
    (3, 3), (2.5, 2.5), (math.nan, ""), (math.inf, ""), (None, ""), (b"\xff", "\\xff")])
def test_values_keep_their_json_type(value: object, expected: object) -> None:
    """Numbers stay numbers (no event has one yet; a future field gets them typed)."""
    assert _typed(value) == expected and type(_typed(value)) is type(expected)


def test_the_schema_refuses_what_would_trip_a_consumer() -> None:
    """The check can fail: the old line format, a field too many, a field missing."""
    good = json.loads(format_event("client_blocked", sample("client_blocked"), 0.0))
    assert errors(good) == []
    old = {k: v for k, v in good.items() if k != "v"} | {"enforced": "True"}
    assert {e.split(":")[0] for e in errors(old)} == {"(line)", "enforced"}
    assert errors(good | {"extra": ""}) != []
    assert errors({k: v for k, v in good.items() if k != "rcpt"}) != []
    assert errors(good | {"event": "rcpt_trap"}) != []


surrogates = st.binary(max_size=80).map(lambda b: b.decode("utf-8", "surrogateescape"))
hostile_text = st.one_of(
    st.text(max_size=200),
    st.text(min_size=400, max_size=700),
    surrogates,
    st.sampled_from(['","client_ip":"6.6.6.6', '\r\n{"event":"rcpt_rejected"}', "\u2028\u2029\x85",
                     "\\", '"', "\x00\x1b[31m", "é" * 600]),
    st.none(),
)


@st.composite
def hostile_events(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    event = draw(st.sampled_from(event_names()))
    fields = sample(event)
    for name, spec in fields_of(event).items():
        if name not in fields:
            continue
        if spec.get("type") == "boolean":
            fields[name] = draw(st.booleans())
        elif spec.get("type") == "integer":
            fields[name] = draw(st.integers(spec.get("minimum", 0), 2**63 - 1))
        elif "enum" in spec:
            fields[name] = draw(st.sampled_from(spec["enum"]))
        else:
            fields[name] = draw(hostile_text)
    # what a caller might wrongly pass cannot displace the line's own structure
    extra = draw(st.dictionaries(st.sampled_from(["time", "event", "v"]), hostile_text))
    return event, fields | extra


@settings(max_examples=400, deadline=None)
@given(hostile_events(), st.floats(0, 4e9))
def test_hostile_values_give_a_valid_line(case: tuple[str, dict[str, object]],
                                          timestamp: float) -> None:
    event, fields = case
    line = format_event(event, fields, timestamp)
    assert line.endswith("\n") and line.count("\n") == 1
    doc = validate_line(line)
    assert (doc["event"], doc["v"]) == (event, EVENT_VERSION)
    for name, spec in fields_of(event).items():
        if name in ("time", "event", "v"):
            continue
        if spec.get("type") in ("boolean", "integer") or "enum" in spec:
            assert doc[name] == fields[name]
        else:
            assert doc[name] == clean_text(fields[name])
            assert len(doc[name].split("...[cut ")[0].encode()) <= FIELD_LIMIT
