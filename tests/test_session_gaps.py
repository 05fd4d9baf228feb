"""Gaps a hostile client or a careless operator found in the session (issue 21: defects 1,
4, 10, 13, 14), driven through pymilter's test context as an MTA drives the milter: only the
callbacks the milter asked for are made, and a no-reply callback's answer is ignored."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import Milter
import pytest
from crowdsec_milter.events import EventWriter
from crowdsec_milter.policy import Action, Reply, Stage
from crowdsec_milter.session import session_class
from crowdsec_milter.settings import Settings
from crowdsec_milter.tally import Tally
from crowdsec_milter.wiring import make_context
from eventschema import read_events
from helpers import Ctx, IndexSource, ctx_for, make, started_writer

import milter

BANNED = "203.0.113.7"
# libmilter's MAXREPLYLEN (sendmail libmilter/smfi.c): the most bytes smfi_setreply takes
REPLY_LIMIT = 980
SKIP = {"hello": Milter.P_NOHELO, "envfrom": Milter.P_NOMAIL,
        "envrcpt": Milter.P_NORCPT, "data": Milter.P_NODATA}
NOREPLY = {"hello": Milter.P_NR_HELO, "envfrom": Milter.P_NR_MAIL,
           "envrcpt": Milter.P_NR_RCPT, "data": Milter.P_NR_DATA}


class Mta(Ctx):
    """Makes only the callbacks the milter asked for, and takes CONTINUE for the answer of
    one it negotiated as no-reply, as Postfix does."""

    def open(self, ip: str) -> int:
        """Negotiate and connect, with no HELO (a client that goes straight to MAIL)."""
        self._negotiate()
        self._stage = Milter.M_CONNECT
        rc = Milter.connect_callback(self, "client.example", 2, (ip, 25))
        self._stage = None
        return Milter.CONTINUE if rc == Milter.NOREPLY or self._protocol & Milter.P_NR_CONN \
            else rc

    def _call(self, stage: int, name: str, *args: str) -> int:
        if self._protocol & SKIP[name]:
            return Milter.CONTINUE
        rc = super()._call(stage, name, *args)
        return Milter.CONTINUE if self._protocol & NOREPLY[name] else rc


def mta_for(stage: Stage, events: EventWriter | None = None, **settings: Any) -> Mta:
    """An MTA in front of the milter as wiring.py builds it from these settings."""
    src = IndexSource()
    src.add(1, BANNED, scenario="crowdsecurity/postfix-spam")
    chosen = dataclasses.replace(Settings(), stage=stage, **settings)
    ctx_for(stage, make(src))  # a fresh offer of every protocol bit
    Milter.factory = session_class(make_context(chosen, src, Tally(), events))
    return Mta()


# -- defect 1: a client that skips the configured stage is decided at the next one ------


@pytest.mark.parametrize("sensor", [False, True], ids=["bouncer", "sensor"])
@pytest.mark.parametrize(("action", "rc", "code"), [
    (Action.REJECT, Milter.REJECT, "550"), (Action.DROP, Milter.TEMPFAIL, "421")])
def test_stage_helo_decides_at_mail_for_a_client_that_skips_helo(
        tmp_path: Path, sensor: bool, action: Action, rc: int, code: str) -> None:
    writer = started_writer(tmp_path / "events.log") if sensor else None
    mta = mta_for(Stage.HELO, writer, actions=(("ban", action),))
    assert mta.open(BANNED) == Milter.CONTINUE
    assert mta._envfrom("<spam@example.net>") == rc  # no HELO came: MAIL decides
    assert mta._reply is not None and mta._reply[0] == code
    if writer is not None:
        writer.stop()
        blocked = [e for e in read_events(tmp_path / "events.log")
                   if e["event"] == "client_blocked"]
        assert [(e["stage"], e["action"]) for e in blocked] == [("mail", str(action))]


@pytest.mark.parametrize("sensor", [False, True], ids=["bouncer", "sensor"])
def test_stage_helo_still_decides_at_helo_and_lets_a_clean_client_go(
        tmp_path: Path, sensor: bool) -> None:
    writer = started_writer(tmp_path / "events.log") if sensor else None
    mta = mta_for(Stage.HELO, writer)
    assert mta._connect(ip=BANNED, helo="evil.example") == Milter.REJECT
    mta = Mta()
    assert mta.open("192.0.2.1") == Milter.CONTINUE
    # a clean client that skipped HELO: let go at MAIL (ACCEPT when nothing later matters)
    assert mta._envfrom("<a@example.net>") == (Milter.CONTINUE if sensor else Milter.ACCEPT)
    assert mta._reply is None
    if writer is not None:
        writer.stop()


@pytest.mark.parametrize("sensor", [False, True], ids=["bouncer", "sensor"])
def test_stage_helo_asks_for_mail_with_a_reply(tmp_path: Path, sensor: bool) -> None:
    """What it costs: one more callback, MAIL, which a clean client that sent HELO never
    reaches in bouncer mode (ACCEPT at HELO ends the milter's part in the connection)."""
    writer = started_writer(tmp_path / "events.log") if sensor else None
    mta = mta_for(Stage.HELO, writer)
    mta._negotiate()
    assert not mta._protocol & (Milter.P_NOHELO | Milter.P_NR_HELO)
    assert not mta._protocol & (Milter.P_NOMAIL | Milter.P_NR_MAIL)
    if writer is None:
        assert mta._connect(ip="192.0.2.1") == Milter.ACCEPT
    else:
        writer.stop()


# -- defect 4: replies that libmilter cannot take ----------------------------------------


class Libmilter(Mta):
    """What libmilter's smfi_setreply refuses (sendmail's libmilter/smfi.c): a code that is
    not 4xx/5xx, a CR or LF in the text, or a text longer than 980 bytes once encoded as
    pymilter encodes it (UTF-8); pymilter then raises milter.error."""

    def setreply(self, rcode: str, xcode: str | None, *msg: str) -> None:
        text = msg[0] if msg else None
        if (len(rcode) != 3 or rcode[0] not in "45" or not rcode.isdigit()
                or (text is not None and (len(text.encode()) > 980 or "\r" in text
                                          or "\n" in text))):
            raise milter.error("cannot set reply")
        super().setreply(rcode, xcode, *msg)


class BrokenReply(Mta):
    """libmilter refusing every reply (smfi_setreply also fails when malloc does)."""

    def setreply(self, rcode: str, xcode: str | None, *msg: str) -> None:
        raise milter.error("cannot set reply")


def test_a_banned_client_with_a_long_scenario_gets_the_reject_through_libmilter() -> None:
    src = IndexSource()
    src.add(1, BANNED, scenario="é" * 100)
    template = Reply.parse("550 5.7.1 %(scenario)s " + "x" * 850, "5")
    ctx_for(Stage.CONNECT, make(src, reject_reply=template))
    mta = Libmilter()
    assert mta.open(BANNED) == Milter.REJECT
    assert mta._reply is not None and mta._reply[2].startswith("é" * 50)


@pytest.mark.parametrize(("action", "rc"), [
    (Action.REJECT, Milter.REJECT), (Action.TEMPFAIL, Milter.TEMPFAIL),
    (Action.DROP, Milter.TEMPFAIL)])
def test_a_reply_libmilter_refuses_falls_back_to_the_bare_code(
        action: Action, rc: int) -> None:
    src = IndexSource()
    src.add(1, BANNED)
    ctx_for(Stage.CONNECT, make(src, actions=(("ban", action),)))
    assert BrokenReply().open(BANNED) == rc  # never CONTINUE


def test_the_lapi_error_reply_falls_back_to_tempfail_too() -> None:
    ctx_for(Stage.CONNECT, make(IndexSource(usable=False), on_lapi_error=Action.TEMPFAIL))
    assert BrokenReply().open(BANNED) == Milter.TEMPFAIL


# -- defect 10: unqualified Postmaster (RFC 5321 4.5.1) -----------------------------------


@pytest.mark.parametrize("rcpt", ["<Postmaster>", "<postmaster>", "<POSTMASTER>",
                                  '<"Postmaster">', "<postmaster@example.org>"])
def test_unqualified_postmaster_is_let_through_at_stage_rcpt(rcpt: str) -> None:
    mta = mta_for(Stage.RCPT)
    assert mta.open(BANNED) == Milter.CONTINUE
    assert mta._envfrom("<spam@example.net>") == Milter.CONTINUE
    assert mta._envrcpt(rcpt) == Milter.CONTINUE
    assert mta._envrcpt("<bob@example.org>") == Milter.REJECT


def test_postmaster_of_another_name_is_not_let_through() -> None:
    mta = mta_for(Stage.RCPT)
    mta.open(BANNED)
    mta._envfrom("<spam@example.net>")
    for rcpt in ("<postmaster2>", "<xpostmaster>", "<postmaster.evil>"):
        assert mta._envrcpt(rcpt) == Milter.REJECT


# -- defect 13: a trap address written another way is still the trap ---------------------


@pytest.mark.parametrize(("rcpt", "resolved"), [
    ('<"trap"@example.org>', None),
    ("<trap@example.org.>", None),
    ("<@relay.example.net:trap@example.org>", None),
    ("<@a.example,@b.example:trap@EXAMPLE.ORG>", None),
    ('<"tr\\ap"@Example.Org.>', None),
    # what the MTA resolved ({rcpt_addr}), when the text the client wrote differs
    ("<anything@example.org>", "trap@example.org"),
])
def test_a_trap_written_another_way_is_reported(tmp_path: Path, rcpt: str,
                                                resolved: str | None) -> None:
    writer = started_writer(tmp_path / "events.log")
    mta = mta_for(Stage.CONNECT, writer, trap_rcpt=("trap@example.org",))
    assert mta._connect(ip="192.0.2.9") == Milter.CONTINUE
    if resolved is not None:
        mta._setsymval("{rcpt_addr}", resolved)
    mta._envfrom("<a@example.net>")
    assert mta._envrcpt(rcpt) == Milter.CONTINUE
    writer.stop()
    traps = [e for e in read_events(tmp_path / "events.log") if e["event"] == "rcpt_trap"]
    assert [e["rcpt"] for e in traps] == [rcpt]


def test_a_lookalike_is_not_a_trap(tmp_path: Path) -> None:
    writer = started_writer(tmp_path / "events.log")
    mta = mta_for(Stage.CONNECT, writer, trap_rcpt=("trap@example.org",))
    mta._connect(ip="192.0.2.9")
    for rcpt in ('<"trap@example.org"@evil.example>', "<trap@example.org.evil>",
                 "<@trap@example.org:x@evil.example>"):
        mta._envrcpt(rcpt)
    writer.stop()
    assert not [e for e in read_events(tmp_path / "events.log") if e["event"] == "rcpt_trap"]
