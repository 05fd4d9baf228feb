"""The milter session through pymilter's own test context (no MTA, no sockets)."""

from __future__ import annotations

import email.message
from pathlib import Path

import Milter
import pytest
from crowdsec_milter.decisions import Decision
from crowdsec_milter.events import EVENT_VERSION
from crowdsec_milter.policy import Action, Stage
from crowdsec_milter.session import tag_value
from crowdsec_milter.settings import Settings
from eventschema import read_events
from helpers import IndexSource, ctx_for, make, started_writer
from Milter.testctx import TestCtx as MilterTestCtx


def banned_source() -> IndexSource:
    src = IndexSource()
    src.add(1, "203.0.113.7")
    src.add(2, "198.51.100.0/24", type_="captcha", scope="Range")
    return src


@pytest.mark.parametrize("stage", list(Stage))
def test_banned_client_is_rejected_at_the_configured_stage(stage: Stage) -> None:
    ctx = ctx_for(stage, make(banned_source()))
    rcs = [ctx._connect(ip="203.0.113.7", helo="evil.example")]
    if rcs[-1] == Milter.CONTINUE:
        rcs.append(ctx._envfrom("<a@b.example>"))
    if rcs[-1] == Milter.CONTINUE:
        rcs.append(ctx._envrcpt("<bob@example.org>"))
    steps = {Stage.CONNECT: 1, Stage.HELO: 1, Stage.MAIL: 2, Stage.RCPT: 3}
    assert rcs[-1] == Milter.REJECT
    assert len(rcs) == steps[stage]
    assert ctx._reply == ("550", "5.7.1", "203.0.113.7 is blocked by CrowdSec")


def test_clean_client_passes_every_stage_and_is_accepted_at_data(tmp_path: Path) -> None:
    writer = started_writer(tmp_path / "events.log")  # the sensor needs every recipient
    ctx = ctx_for(Stage.RCPT, make(banned_source()), writer)
    assert ctx._connect(ip="192.0.2.1") == Milter.CONTINUE
    assert ctx._envfrom("<a@b.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<bob@example.org>") == Milter.CONTINUE
    assert ctx._data() == Milter.ACCEPT
    assert ctx._reply is None
    writer.stop()


@pytest.mark.parametrize("stage", list(Stage))
def test_bouncer_only_accepts_a_clean_client_at_the_deciding_stage(stage: Stage) -> None:
    """With the event log off nothing after the verdict matters: ACCEPT there, and the
    MTA stops calling the milter (for the connection, or from MAIL on for the message)."""
    ctx = ctx_for(stage, make(banned_source()))
    rcs = [ctx._connect(ip="192.0.2.1")]
    if rcs[-1] == Milter.CONTINUE:
        rcs.append(ctx._envfrom("<a@b.example>"))
    if rcs[-1] == Milter.CONTINUE:
        rcs.append(ctx._envrcpt("<bob@example.org>"))
    steps = {Stage.CONNECT: 1, Stage.HELO: 1, Stage.MAIL: 2, Stage.RCPT: 3}
    assert (rcs[-1], len(rcs)) == (Milter.ACCEPT, steps[stage])
    assert ctx._reply is None


def test_bouncer_only_keeps_asking_for_a_banned_clients_later_recipients() -> None:
    """--stage rcpt with --always-allow-rcpt: an allowed recipient of a banned client must
    not ACCEPT the message, or the next recipient would pass unasked."""
    ctx = ctx_for(Stage.RCPT, make(banned_source()))
    Milter.factory.context.always_allow_rcpt = ("postmaster@*",)  # type: ignore[attr-defined]
    assert ctx._connect(ip="203.0.113.7") == Milter.CONTINUE
    assert ctx._envfrom("<a@b.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<postmaster@example.org>") == Milter.CONTINUE
    assert ctx._envrcpt("<bob@example.org>") == Milter.REJECT


def test_captcha_range_tempfails_and_ipv6_mapped_matches() -> None:
    ctx = ctx_for(Stage.CONNECT, make(banned_source()))
    assert ctx._connect(ip="198.51.100.77") == Milter.TEMPFAIL
    assert ctx._reply[0] == "451"
    ctx = ctx_for(Stage.CONNECT, make(banned_source()))
    assert ctx._connect(ip="::ffff:203.0.113.7") == Milter.REJECT


def test_drop_sets_421() -> None:
    ctx = ctx_for(Stage.HELO, make(banned_source(), actions=(("ban", Action.DROP),)))
    assert ctx._connect(ip="203.0.113.7") == Milter.TEMPFAIL
    assert ctx._reply[0] == "421"


def test_dry_run_lets_banned_clients_through(tmp_path: Path) -> None:
    ctx = ctx_for(Stage.CONNECT, make(banned_source(), dry_run=True))
    assert ctx._connect(ip="203.0.113.7") == Milter.ACCEPT  # bouncer only: nothing later
    assert ctx._reply is None
    writer = started_writer(tmp_path / "events.log")
    ctx = ctx_for(Stage.CONNECT, make(banned_source(), dry_run=True), writer)
    assert ctx._connect(ip="203.0.113.7") == Milter.CONTINUE  # the sensor goes on
    assert ctx._reply is None
    writer.stop()


def test_only_the_deciding_callback_expects_a_reply(tmp_path: Path) -> None:
    src = banned_source()
    writer = started_writer(tmp_path / "events.log")
    no_reply_bits = Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_RCPT
    for stage, replying in ((Stage.CONNECT, Milter.P_NR_CONN), (Stage.RCPT, Milter.P_NR_RCPT)):
        ctx = ctx_for(stage, make(src), writer)
        ctx._negotiate()  # what the MTA is told, when it offers every protocol bit
        negotiated = ctx._protocol
        assert not negotiated & replying  # the deciding callback replies
        assert negotiated & no_reply_bits == no_reply_bits & ~replying
        # the content phase is never asked for; rejected recipients are; MAIL is not (the
        # sender comes with the RCPT macros)
        for bit in (Milter.P_NOHDRS, Milter.P_NOEOH, Milter.P_NOBODY, Milter.P_NOUNKNOWN,
                    Milter.P_RCPT_REJ, Milter.P_NOMAIL):
            assert negotiated & bit
        assert not negotiated & (Milter.P_NOCONNECT | Milter.P_NOHELO | Milter.P_NORCPT
                                 | Milter.P_NODATA)
        assert {b"{mail_addr}", b"{rcpt_mailer}", b"{rcpt_host}", b"{rcpt_addr}", b"i"} <= \
            ctx._symlist[Milter.M_ENVRCPT]
    writer.stop()


def test_sensor_asks_for_mail_when_the_mta_cannot_send_the_sender_with_rcpt(
        tmp_path: Path) -> None:
    writer = started_writer(tmp_path / "events.log")
    ctx = ctx_for(Stage.CONNECT, make(banned_source()), writer)
    MilterTestCtx.default_opts = [Milter.CURR_ACTS & ~Milter.SETSYMLIST, 0x1FFFFF, 0, 0]
    ctx._negotiate()
    assert not ctx._protocol & Milter.P_NOMAIL
    assert ctx._protocol & Milter.P_NR_MAIL
    assert ctx._symlist[Milter.M_ENVRCPT] is None
    writer.stop()


def test_bouncer_only_asks_for_the_deciding_callback_alone() -> None:
    ctx = ctx_for(Stage.CONNECT, make(banned_source()))
    ctx._negotiate()
    skipped = (Milter.P_NOHELO | Milter.P_NOMAIL | Milter.P_NORCPT | Milter.P_NODATA
               | Milter.P_NOHDRS | Milter.P_NOEOH | Milter.P_NOBODY | Milter.P_NOUNKNOWN)
    assert ctx._protocol & skipped == skipped
    assert not ctx._protocol & (Milter.P_NOCONNECT | Milter.P_NR_CONN | Milter.P_RCPT_REJ)


class Exploding:
    usable = True

    def lookup(self, *args: object) -> None:
        raise RuntimeError("boom")


@pytest.mark.parametrize(("on_error", "expected"),
                         [(Action.ACCEPT, Milter.CONTINUE), (Action.TEMPFAIL, Milter.TEMPFAIL)])
def test_internal_error_never_escapes(on_error: Action, expected: int) -> None:
    ctx = ctx_for(Stage.CONNECT, make(Exploding(), on_lapi_error=on_error))  # type: ignore[arg-type]
    assert ctx._connect(ip="203.0.113.7") == expected
    if expected == Milter.TEMPFAIL:
        assert ctx._reply[:2] == ("451", "4.3.0")


def test_rejected_recipients_become_events(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    writer = started_writer(path)
    ctx = ctx_for(Stage.CONNECT, make(IndexSource()), writer)
    ctx._setsymval("j", "mx1.example.org")
    ctx._setsymval("i", "4ABC123")
    assert ctx._connect(host="probe.example", ip="192.0.2.9", helo="x\"y") == Milter.CONTINUE
    assert ctx._envfrom("<spam@example.net>") == Milter.CONTINUE
    ctx._setsymval("{rcpt_mailer}", "error")
    ctx._setsymval("{rcpt_host}", "5.1.1")
    ctx._setsymval("{rcpt_addr}", "Recipient address rejected: User unknown")
    for rcpt in ("<guess1@example.org>", '<x","client_ip":"6.6.6.6@example.org>'):
        assert ctx._envrcpt(rcpt) == Milter.CONTINUE
    ctx._setsymval("{rcpt_mailer}", "local")
    assert ctx._envrcpt("<bob@example.org>") == Milter.CONTINUE
    writer.stop()
    events = read_events(path)
    assert len(events) == 2
    assert {e["client_ip"] for e in events} == {"192.0.2.9"}
    assert events[0] | {"time": None} == {
        "time": None, "event": "rcpt_rejected", "v": EVENT_VERSION, "client_ip": "192.0.2.9",
        "client_name": "probe.example", "helo": 'x"y', "mail_from": "<spam@example.net>",
        "rcpt": "<guess1@example.org>", "status": "5.1.1",
        "reason": "Recipient address rejected: User unknown", "queue_id": "4ABC123",
        "mta": "mx1.example.org"}
    assert events[1]["rcpt"] == '<x","client_ip":"6.6.6.6@example.org>'


@pytest.mark.parametrize(("host", "addr", "status", "reason"), [
    # Postfix: the status, and its reason text
    ("5.1.1", "Recipient address rejected: User unknown", "5.1.1",
     "Recipient address rejected: User unknown"),
    ("4.7.1", "Relay access denied", "4.7.1", "Relay access denied"),
    # Sendmail 8.17: the status, and its reply
    ("5.1.1", "550 5.1.1 User unknown", "5.1.1", "550 5.1.1 User unknown"),
    # a status only in the reply
    ("", "550 5.1.1 User unknown", "5.1.1", "550 5.1.1 User unknown"),
    ("", "550-5.7.1 denied", "5.7.1", "550-5.7.1 denied"),
    # Sendmail 8.18: the address's own host and user, which are no status and no reason
    ("", "nosuchuser", "", ""),
    ("example.org", "5.1.1", "", ""),
    ("5.1.1.2", "550 5.1.10.1 x", "", ""),
])
def test_rejected_recipient_status_and_reason_as_each_mta_gives_them(
        tmp_path: Path, host: str, addr: str, status: str, reason: str) -> None:
    path = tmp_path / "events.log"
    writer = started_writer(path)
    ctx = ctx_for(Stage.CONNECT, make(IndexSource()), writer)
    assert ctx._connect(ip="192.0.2.9") == Milter.CONTINUE
    ctx._setsymval("{rcpt_mailer}", "error")
    ctx._setsymval("{rcpt_host}", host)
    ctx._setsymval("{rcpt_addr}", addr)
    assert ctx._envrcpt("<nosuchuser@example.org>") == Milter.CONTINUE
    writer.stop()
    event = read_events(path)[0]
    assert (event["event"], event["status"], event["reason"]) == ("rcpt_rejected", status, reason)


def test_sender_of_events_comes_with_the_rcpt_macros(tmp_path: Path) -> None:
    """MAIL is not asked for: the sender field comes from {mail_addr} at RCPT, spelled as
    the MAIL argument was (in angle brackets, <> for the null sender)."""
    path = tmp_path / "events.log"
    writer = started_writer(path)
    for sender, shown in (("spam@example.net", "<spam@example.net>"), ("", "<>"),
                          ('"odd name"@example.net', '<"odd name"@example.net>')):
        ctx = ctx_for(Stage.CONNECT, make(IndexSource()), writer)
        assert ctx._connect(ip="192.0.2.9") == Milter.CONTINUE
        ctx._setsymval("{mail_addr}", sender)
        ctx._setsymval("{rcpt_mailer}", "error")
        ctx._setsymval("{rcpt_host}", "5.1.1")
        assert ctx._envrcpt("<guess@example.org>") == Milter.CONTINUE
        writer.stop()
        assert read_events(path)[-1]["mail_from"] == shown
        writer.start()
    writer.stop()


def test_blocked_client_becomes_one_event(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    writer = started_writer(path)
    ctx = ctx_for(Stage.RCPT, make(banned_source()), writer)
    ctx._connect(ip="203.0.113.7", helo="evil")
    ctx._envfrom("<a@b>")
    assert ctx._envrcpt("<r1@example.org>") == Milter.REJECT
    assert ctx._envrcpt("<r2@example.org>") == Milter.REJECT
    writer.stop()
    events = read_events(path)
    assert len(events) == 1
    e = events[0]
    assert (e["event"], e["client_ip"], e["stage"], e["decision_type"], e["decision_scope"],
            e["decision_value"], e["origin"], e["rcpt"]) == \
        ("client_blocked", "203.0.113.7", "rcpt", "ban", "Ip", "203.0.113.7", "crowdsec",
         "<r1@example.org>")
    assert e["scenario"] == "crowdsecurity/postfix-spam"


def test_settings_defaults_match_the_documented_ones() -> None:
    s = Settings()
    assert (s.socket, s.mode, s.stage, s.on_lapi_error) == \
        ("inet:8895@127.0.0.1", "stream", Stage.CONNECT, Action.ACCEPT)


def test_bouncer_only_with_traps_or_exempt_logins_keeps_what_they_need() -> None:
    """Trap recipients are watched with the event log off too: no ACCEPT at connect, every
    RCPT asked for; --exempt-authenticated needs MAIL (the login) at --stage rcpt."""
    ctx = ctx_for(Stage.CONNECT, make(banned_source()))
    Milter.factory.context.trap_rcpt = ("trap@*",)  # type: ignore[attr-defined]
    assert ctx._connect(ip="192.0.2.1") == Milter.CONTINUE
    assert not ctx._protocol & (Milter.P_NORCPT | Milter.P_NODATA)
    assert ctx._protocol & Milter.P_RCPT_REJ
    ctx = ctx_for(Stage.RCPT, make(banned_source()))
    Milter.factory.context.exempt_authenticated = True  # type: ignore[attr-defined]
    ctx._negotiate()
    assert not ctx._protocol & Milter.P_NOMAIL
    assert ctx._protocol & Milter.P_NR_MAIL


def test_tagged_client_stays_to_end_of_message_and_gets_one_safe_header(
        tmp_path: Path) -> None:
    src = IndexSource()
    src.add(1, "203.0.113.7", scenario="crowdsecurity/http-probing\r\nBcc: x\u00e9")
    src.add(2, "203.0.113.8", scenario="manual")
    policy = make(src, actions=(("ban", Action.REJECT), ("scenario:*http*", Action.TAG)))
    header = ('ban; origin=crowdsec; scenario="crowdsecurity/http-probing??Bcc: x?"; '
              "scope=Ip; value=203.0.113.7")
    for events in (None, started_writer(tmp_path / "events.log")):
        ctx = ctx_for(Stage.CONNECT, policy, events)
        assert ctx._connect(ip="203.0.113.7") == Milter.CONTINUE
        # asked of the MTA: adding headers and nothing else; never headers or body
        assert ctx._opts[0] == Milter.ADDHDRS
        assert ctx._opts[1] & (Milter.P_NOHDRS | Milter.P_NOEOH | Milter.P_NOBODY) == \
            Milter.P_NOHDRS | Milter.P_NOEOH | Milter.P_NOBODY
        assert ctx._envfrom("<a@example.net>") == Milter.CONTINUE
        assert ctx._envrcpt("<bob@example.org>") == Milter.CONTINUE
        assert ctx._data() == Milter.CONTINUE  # stays for the end of message
        for _ in range(2):  # every message of the session
            ctx._msg = email.message.Message()
            assert ctx._eom() == Milter.ACCEPT
            assert ctx._msg.get_all("X-CrowdSec-Decision") == [header]
        # the same milter lets a clean client go (at connect without events, else at
        # DATA), and rejects a banned one
        rc = ctx._connect(ip="192.0.2.50")
        if events is None:
            assert rc == Milter.ACCEPT
        else:
            assert rc == Milter.CONTINUE and ctx._envfrom("<a@example.net>") == Milter.CONTINUE
            assert ctx._data() == Milter.ACCEPT
            events.stop()
        assert ctx._connect(ip="203.0.113.8") == Milter.REJECT


def test_without_a_tag_key_no_right_to_change_messages_is_asked() -> None:
    ctx = ctx_for(Stage.CONNECT, make(banned_source()))
    ctx._connect(ip="192.0.2.50")
    assert ctx._opts[0] == 0


def test_tag_header_value_is_bounded() -> None:
    d = Decision(1, "ban", "Ip", "192.0.2.1", "CAPI", "s" * 5000, 0.0)
    assert len(tag_value(d)) == 900 and tag_value(d).isascii()
