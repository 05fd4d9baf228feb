"""Remediation usage metrics: only clients actually refused count as `dropped`."""

from __future__ import annotations

from crowdsec_milter.tally import SESSIONS, blocked
from crowdsec_milter.usage import build_payload


def items(tally: dict) -> dict[str, list[dict]]:
    doc = build_payload(tally, {}, active=7, startup=1, window=60, now=61)
    out: dict[str, list[dict]] = {}
    for item in doc["remediation_components"][0]["metrics"][0]["items"]:
        out.setdefault(item["name"], []).append(item)
    return out


def test_only_refused_clients_count_as_dropped() -> None:
    tally = {
        SESSIONS: 9,
        blocked("ban", "cscli", "connect", "reject"): 2,
        blocked("captcha", "CAPI", "connect", "tempfail"): 1,
        blocked("ban", "cscli", "helo", "drop"): 1,
        blocked("ban", "cscli", "mail", "exempt"): 3,  # authenticated: let through
        blocked("ban", "CAPI", "connect", "tag"): 4,  # let through, header added
        blocked("ban", "cscli", "connect", "none"): 5,  # dry run or log only
    }
    got = items(tally)
    dropped = {(i["labels"]["origin"], i["labels"]["remediation"]): i["value"]
               for i in got["dropped"]}
    assert dropped == {("cscli", "ban"): 3, ("CAPI", "captcha"): 1}
    assert got["processed"][0]["value"] == 9
    assert got["active_decisions"][0]["value"] == 7
