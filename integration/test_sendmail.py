"""Sendmail (8.17 on Debian 12, 8.18 on Debian 13) in front of the real milter: a banned
client is refused, a clean one is not, and a recipient Sendmail refuses as unknown becomes an
event."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from eventschema import read_events
from milter_process import MilterProcess
from ports import free_port
from real_crowdsec import CrowdSec
from real_sendmail import Sendmail, session

pytestmark = pytest.mark.integration


def test_sendmail_rejects_banned_and_reports_rejected_recipients(tmp_path: Path) -> None:
    cs = CrowdSec(tmp_path / "cs").start()
    milter = MilterProcess(tmp_path, cs.lapi_url, cs.add_bouncer("sendmail"),
                           "--update-frequency", "0.5", "--trusted-network", "127.0.0.1/32")
    milter.start()
    sm = Sendmail(tmp_path / "sendmail", milter.port, free_port()).start()
    try:
        banned, clean = "127.0.0.2", "127.0.0.3"
        cs.add_decision(ip=banned)
        deadline = time.monotonic() + 10
        transcript = session(sm.port, banned, ["root@example.org"])
        while not transcript[0][1].startswith("554") and time.monotonic() < deadline:
            time.sleep(0.3)
            transcript = session(sm.port, banned, ["root@example.org"])
        # Sendmail answers a connect-stage reject with its own 554 greeting and refuses
        # every command (the milter's text shows with --stage helo or later)
        assert transcript[0][1].startswith("554"), transcript
        assert dict(transcript)["RCPT TO:<root@example.org>"].startswith("550")
        assert "reject client=127.0.0.2 type=ban" in milter.log()
        ok = session(sm.port, clean, ["root@example.org", "victim@foreign.example",
                                      "nosuchuser@example.org"])
        replies = dict(ok)
        assert replies["MAIL FROM:<sender@example.net>"].startswith("250")
        assert replies["RCPT TO:<root@example.org>"].startswith("250")
        assert replies["RCPT TO:<victim@foreign.example>"].startswith("550 5.7.1")
        assert replies["RCPT TO:<nosuchuser@example.org>"].startswith("550 5.1.1")
        # SIGTERM right after the session: Sendmail did not wait for the no-reply RCPT
        # callback, so this also checks that stopping drains what is already sent to us
        milter.stop()
        events = read_events(milter.events)
        assert any(x["event"] == "client_blocked" and x["client_ip"] == banned for x in events)
        rejected = [e for e in events if e["event"] == "rcpt_rejected"]
        # The unknown user becomes an event. Sendmail does not hand recipients refused by
        # its check_rcpt ruleset ("Relaying denied") to milters: no event for those.
        assert [(e["client_ip"], e["rcpt"]) for e in rejected] == \
            [(clean, "<nosuchuser@example.org>")]
        assert rejected[0]["mta"] == "mx-sendmail.example"
        version = re.search(r"Sendmail (\d+)\.(\d+)", ok[0][1])
        assert version, ok[0]
        if (int(version[1]), int(version[2])) < (8, 18):
            # 8.17 gives the status in {rcpt_host} and its reply in {rcpt_addr}
            assert rejected[0]["status"] == "5.1.1"
            assert "User unknown" in rejected[0]["reason"]
        else:
            # 8.18 gives neither: those macros keep the address's host ("") and local part
            # ("nosuchuser"), which the event must not show as a status or a reason
            assert (rejected[0]["status"], rejected[0]["reason"]) == ("", "")
    finally:
        sm.stop()
        milter.stop(signal.SIGKILL)
        cs.stop()
