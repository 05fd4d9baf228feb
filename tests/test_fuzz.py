"""Hostile input, fuzzed: milter callbacks with arbitrary envelope text, macros and client
addresses; the LAPI decoders with arbitrary JSON and bytes. Nothing may escape to libmilter,
and every answer must be a valid milter reply."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

import Milter
from crowdsec_milter.decisions import DecisionError, parse_decision
from crowdsec_milter.events import clean_text
from crowdsec_milter.jsonstream import StreamFormatError, iter_arrays, iter_list
from crowdsec_milter.policy import Stage
from eventschema import read_events, validate_line
from helpers import Ctx, IndexSource, ctx_for, make, started_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

VALID = {Milter.CONTINUE, Milter.REJECT, Milter.TEMPFAIL, Milter.ACCEPT, Milter.NOREPLY}

surrogates = st.binary(max_size=60).map(lambda b: b.decode("utf-8", "surrogateescape"))
text = st.one_of(st.text(max_size=300), surrogates)
addresses = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: f"{a}%eth0"),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.sampled_from(["", "unknown", "[1.2.3.4]", "IPv6:::1", "1.2.3.4.5", "::g"]),
    text,
)


def source_with_bans() -> IndexSource:
    src = IndexSource()
    src.add(1, "0.0.0.0/1", scope="Range")
    src.add(2, "8000::/1", scope="Range", type_="captcha")
    return src


class Hostile(Ctx):
    def connect_any(self, host: str, ip: str) -> int:
        """Like Ctx._connect, with any address text and family the MTA could send."""
        self._negotiate()
        self._stage = Milter.M_CONNECT
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        rc = Milter.connect_callback(self, host, family, (ip, 0))
        self._stage = None
        return rc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stage=st.sampled_from(list(Stage)), host=text, ip=addresses, helo=text, sender=text,
       rcpts=st.lists(text, max_size=4),
       macros=st.dictionaries(st.sampled_from(["{rcpt_mailer}", "{rcpt_host}", "{rcpt_addr}",
                                               "i", "j"]), text))
def test_callbacks_never_raise_and_always_answer_validly(tmp_path_factory, stage, host, ip,
                                                         helo, sender, rcpts, macros) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "events.log"
    writer = started_writer(path)
    ctx = ctx_for(stage, make(source_with_bans()), writer)
    ctx.__class__ = Hostile
    for name, value in macros.items():
        ctx._setsymval(name, value)
    rcs = [ctx.connect_any(host, ip), ctx._helo(helo), ctx._envfrom(sender)]
    rcs += [ctx._envrcpt(r) for r in rcpts]
    rcs.append(ctx._data())
    writer.stop()
    assert set(rcs) <= VALID
    if ctx._reply is not None:
        code, _xcode, *lines = ctx._reply
        assert code[0] in "45" and len(code) == 3
        assert all("\r" not in x and "\n" not in x for x in lines)
    lines = path.read_text(errors="strict").split("\n")
    assert lines[-1] == ""  # every line ends with its newline
    for line in lines[:-1]:
        assert validate_line(line)["client_ip"] == clean_text(ip)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=40)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20)
decision_like = st.fixed_dictionaries(
    {}, optional={"id": json_values | st.integers(), "type": json_values | st.just("ban"),
                  "scope": json_values | st.sampled_from(["Ip", "Range", "range"]),
                  "value": json_values | addresses, "duration": json_values | st.text(max_size=12),
                  "origin": json_values, "scenario": json_values})


@settings(max_examples=500, deadline=None)
@given(item=st.one_of(json_values, decision_like))
def test_decision_decoder_only_raises_decision_error(item) -> None:
    with contextlib.suppress(DecisionError):
        parse_decision(item, 0.0)


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(st.binary(max_size=200),
                      json_values.map(lambda v: json.dumps(v).encode()),
                      st.dictionaries(st.sampled_from(["new", "deleted"]),
                                      st.one_of(st.none(), st.lists(decision_like, max_size=3)))
                      .map(lambda v: json.dumps(v).encode()),
                      st.lists(decision_like, max_size=3).map(lambda v: json.dumps(v).encode())),
       size=st.integers(1, 50))
def test_stream_decoders_only_raise_their_error(body: bytes, size: int) -> None:
    """Both walkers: the stream object (`/v1/decisions/stream`) and the plain list
    (`/v1/decisions`, what `check` counts)."""
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    for items in ((item for _key, item in iter_arrays(chunks)), iter_list(chunks)):
        try:
            for item in items:
                with contextlib.suppress(DecisionError):
                    parse_decision(item, 0.0)
        except StreamFormatError:
            pass


def test_fuzz_writes_valid_event_lines(tmp_path: Path) -> None:
    """A deterministic hostile session: every event line parses and names the real client."""
    path = tmp_path / "e.log"
    writer = started_writer(path)
    ctx = ctx_for(Stage.CONNECT, make(IndexSource()), writer)
    ctx._setsymval("{rcpt_mailer}", "error")
    ctx._connect(ip="192.0.2.7", helo='evil"\r\n{"client_ip":"6.6.6.6"}')
    ctx._envfrom(b"\xff\xfe".decode("utf-8", "surrogateescape"))
    for r in ('<a","client_ip":"6.6.6.6>', "<\u2028x>", "<" + "é" * 600 + ">"):
        ctx._envrcpt(r)
    writer.stop()
    events = read_events(path)
    assert len(events) == 3 and {e["client_ip"] for e in events} == {"192.0.2.7"}
    assert events[0]["mail_from"] == "\\xff\\xfe"
    assert events[2]["rcpt"].endswith("bytes]")
