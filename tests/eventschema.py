"""The published event format (conf/events.schema.json), for every test that reads event
lines: `validate_line` and `read_events` check each line against the schema, so a line a
consumer's parser would choke on fails the test that produced it.

Run it to print the README's generated field table: `.venv/bin/python tests/eventschema.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "conf" / "events.schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
Draft202012Validator.check_schema(SCHEMA)
_VALIDATOR = Draft202012Validator(SCHEMA)

README_BEGIN = ("<!-- event-fields: generated from conf/events.schema.json"
                " by tests/eventschema.py -->")
README_END = "<!-- end event-fields -->"


def errors(doc: object) -> list[str]:
    """Every way `doc` breaks the schema, one line each ([] when it conforms)."""
    found = (f"{'/'.join(map(str, e.absolute_path)) or '(line)'}: {e.message}"
             for e in sorted(_VALIDATOR.iter_errors(doc), key=lambda e: list(e.absolute_path)))
    return list(dict.fromkeys(found))  # a field required twice (line and event) once


def validate_line(line: str) -> dict[str, Any]:
    """One event line (its newline optional) parsed, after checking it is one line for every
    line reader and conforms to the schema; an AssertionError says what is wrong."""
    text = line[:-1] if line.endswith("\n") else line
    assert text.splitlines() == [text], f"not exactly one line: {line!r:.300}"
    doc = json.loads(text)
    problems = errors(doc)
    assert not problems, f"event line breaks conf/events.schema.json: {problems}\n{text:.2000}"
    return doc


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every line of an event log, each validated ([] while the file does not exist)."""
    if not path.exists():
        return []
    text = path.read_text(errors="strict")
    assert not text or text.endswith("\n"), f"last line lacks its newline: {text[-300:]!r}"
    return [validate_line(x) for x in text.split("\n")[:-1]]


def event_names() -> list[str]:
    return [rule["if"]["properties"]["event"]["const"] for rule in SCHEMA["allOf"]]


def fields_of(event: str) -> dict[str, dict[str, Any]]:
    """The schema's field definitions of one event, in line order."""
    return SCHEMA["$defs"][event]["properties"]


def sample(event: str, **values: Any) -> dict[str, Any]:
    """A complete, valid field set for `event` (as EventWriter.emit takes it), with the
    given values in place of the defaults."""
    out: dict[str, Any] = {}
    for name, spec in fields_of(event).items():
        if name in ("time", "event", "v"):
            continue
        if spec.get("type") == "boolean":
            out[name] = True
        elif spec.get("type") == "integer":
            out[name] = 0
        elif "enum" in spec:
            out[name] = spec["enum"][0]
        else:
            out[name] = ""
    unknown = set(values) - set(out)
    assert not unknown, f"{event} has no field(s) {sorted(unknown)}"
    return out | values


def _type(spec: dict[str, Any]) -> str:
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    if "enum" in spec:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in spec["enum"])
    if spec.get("$ref") == "#/$defs/text":
        return "text"
    return str(spec["type"])


def readme_section() -> str:
    """The README's event tables, derived from the schema: per event, one row per field in
    line order."""
    version = fields_of(event_names()[0])["v"]["const"]
    lines = [README_BEGIN, "",
             f"Format version `\"v\": {version}` (schema `$id`: `{SCHEMA['$id']}`). "
             f"{SCHEMA['description']}",
             "", f"**text**: {SCHEMA['$defs']['text']['description']}"]
    for event in event_names():
        lines += ["", f"### `{event}`", "", SCHEMA["$defs"][event]["description"], "",
                  "| field | type | meaning |", "|---|---|---|"]
        for name, spec in fields_of(event).items():
            meaning = spec["description"].replace("|", "\\|")
            lines.append(f"| `{name}` | {_type(spec)} | {meaning} |")
    lines += ["", README_END]
    return "\n".join(lines)


if __name__ == "__main__":
    print(readme_section())
