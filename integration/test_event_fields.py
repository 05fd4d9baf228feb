"""Every field of the sensor's events, filled through a real Postfix and the real CrowdSec
LAPI: the milter no longer asks for the MAIL callback (the sender comes with the RCPT
macros, {mail_addr}, asked for at negotiation), so these fields must still be what the
client sent and the MTA said."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventschema import read_events
from milter_process import MilterProcess
from real_crowdsec import CrowdSec
from real_postfix import Postfix, session

pytestmark = pytest.mark.integration
UNKNOWN = "Recipient address rejected: User unknown in local recipient table"


@pytest.fixture(scope="module")
def lapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrowdSec]:
    cs = CrowdSec(tmp_path_factory.mktemp("crowdsec")).start()
    yield cs
    cs.stop()


def test_event_fields_through_postfix(tmp_path: Path, lapi: CrowdSec) -> None:
    banned = "203.0.113.61"
    lapi.add_decision(ip=banned)
    milter = MilterProcess(tmp_path, lapi.lapi_url, lapi.add_bouncer("fields"),
                           "--stage", "rcpt").start()
    postfix = Postfix(tmp_path / "postfix", f"inet:127.0.0.1:{milter.port}").start()
    try:
        clean = session(postfix.port, "192.0.2.61", helo="fields.example",
                        mail_from='"odd name"@example.net',
                        rcpts=["bob@example.org", "nobody@example.org"])
        assert clean.rcpt_codes == [250, 550], clean.text()
        null = session(postfix.port, "192.0.2.62", helo="null.example", mail_from="",
                       rcpts=["nobody@example.org"], data=False)
        assert null.rcpt_codes == [550], null.text()
        blocked = session(postfix.port, banned, helo="evil.example",
                          mail_from="spammer@example.net", rcpts=["bob@example.org"])
        assert blocked.rcpt_codes == [550] and "CrowdSec" in blocked.text(), blocked.text()
    finally:
        postfix.stop()
        milter.stop()
    found = re.search(r"(\w+): client=unknown\[192\.0\.2\.61\]", postfix.log_text())
    assert found, postfix.log_text()[-2000:]
    got = [{k: v for k, v in e.items() if k != "time"} for e in read_events(milter.events)]
    assert got == [
        {"event": "rcpt_rejected", "v": 1, "client_ip": "192.0.2.61", "client_name": "[192.0.2.61]",
         "helo": "fields.example", "mail_from": '<"odd name"@example.net>',
         "rcpt": "<nobody@example.org>", "status": "5.1.1", "reason": UNKNOWN,
         "queue_id": found.group(1), "mta": "mx-test.example"},
        {"event": "rcpt_rejected", "v": 1, "client_ip": "192.0.2.62", "client_name": "[192.0.2.62]",
         "helo": "null.example", "mail_from": "<>", "rcpt": "<nobody@example.org>",
         "status": "5.1.1", "reason": UNKNOWN, "queue_id": "", "mta": "mx-test.example"},
        {"event": "client_blocked", "v": 1, "client_ip": banned, "client_name": f"[{banned}]",
         "helo": "evil.example", "mail_from": "<spammer@example.net>",
         "rcpt": "<bob@example.org>", "stage": "rcpt", "action": "reject", "enforced": True,
         "reason": "decision", "decision_type": "ban", "decision_scope": "Ip",
         "decision_value": banned, "scenario": got[2].get("scenario"), "origin": "cscli",
         "mta": "mx-test.example"},
    ], got
