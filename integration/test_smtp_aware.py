"""SMTP-aware protection through a real Postfix and the real CrowdSec LAPI: authenticated
users behind a banned address (--exempt-authenticated), and spam traps (--trap-rcpt) that
get the sender banned by the shipped scenario and rejected on its next session."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from milter_process import MilterProcess
from real_crowdsec import CrowdSec
from real_postfix import LOCAL_USERS, Postfix, Transcript, session
from waiting import eventually

pytestmark = pytest.mark.integration


def events(milter: MilterProcess) -> list[dict]:
    if not milter.events.exists():
        return []
    return [json.loads(x) for x in milter.events.read_text().splitlines()]


def blocked(t: Transcript) -> bool:
    return t.code("MAIL") == 550 and "blocked by CrowdSec" in t.text()


def delivered(t: Transcript) -> bool:
    return t.code("MAIL") == 250 and t.rcpt_codes == [250] and t.code("<message>") == 250


@pytest.fixture(scope="module")
def lapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrowdSec]:
    cs = CrowdSec(tmp_path_factory.mktemp("crowdsec")).start()
    yield cs
    cs.stop()


@pytest.mark.parametrize("stage", ["mail", "rcpt"])
def test_authenticated_users_behind_a_banned_address_get_through(
        tmp_path: Path, lapi: CrowdSec, stage: str) -> None:
    ip, in_range = f"203.0.113.{40 + len(stage)}", f"10.77.{len(stage)}.9"
    lapi.add_decision(ip=ip)
    lapi.add_decision(range_=f"10.77.{len(stage)}.0/24")
    milter = MilterProcess(tmp_path, lapi.lapi_url, lapi.add_bouncer(f"auth-{stage}"),
                           "--stage", stage, "--exempt-authenticated",
                           "--update-frequency", "1").start()
    postfix = Postfix(tmp_path / "postfix", f"inet:127.0.0.1:{milter.port}").start()
    try:
        for client in (ip, in_range):
            alice = session(postfix.port, client, rcpts=["bob@example.org"], login="alice")
            assert delivered(alice), alice.text()
            anonymous = session(postfix.port, client, rcpts=["bob@example.org"])
            if stage == "mail":
                assert blocked(anonymous), anonymous.text()
            else:
                assert anonymous.rcpt_codes == [550], anonymous.text()
        assert eventually(lambda: len([e for e in events(milter)
                                       if e["event"] == "client_blocked"]) == 4)
        seen = [e for e in events(milter) if e["event"] == "client_blocked"]
        exempt = [e for e in seen if e["action"] == "exempt"]
        assert [(e["client_ip"], e["enforced"]) for e in exempt] == [
            (ip, False), (in_range, False)]
        # what would have applied is still named
        assert [(e["decision_scope"], e["decision_type"]) for e in exempt] == [
            ("Ip", "ban"), ("Range", "ban")]
        assert exempt[1]["decision_value"] == f"10.77.{len(stage)}.0/24"
        others = [e for e in seen if e["action"] != "exempt"]
        assert [(e["action"], e["enforced"]) for e in others] == [("reject", True)] * 2
        assert f"exempt (authenticated as alice, would reject) client={ip}" in milter.log()
    finally:
        postfix.stop()
        milter.stop(signal.SIGKILL)


@pytest.fixture
def trap_node(tmp_path: Path) -> Iterator[tuple[CrowdSec, MilterProcess, Postfix]]:
    """CrowdSec (LAPI and agent with the shipped content) reading the milter's events; a
    Postfix where trap@example.org is a real mailbox and spamtrap-*@ are unknown users."""
    log = tmp_path / "events.log"
    log.touch()
    cs = CrowdSec(tmp_path / "cs").start(acquis=log)
    milter = MilterProcess(tmp_path, cs.lapi_url, cs.add_bouncer("trap"),
                           "--update-frequency", "1", "--trap-rcpt", "trap@example.org",
                           "--trap-rcpt", "spamtrap-*@example.org").start()
    users = ", ".join(f"{u}=ok" for u in (*LOCAL_USERS, "trap"))
    postfix = Postfix(tmp_path / "postfix", f"inet:127.0.0.1:{milter.port}",
                      extra={"local_recipient_maps": f"inline:{{{users}}}"}).start()
    yield cs, milter, postfix
    postfix.stop()
    milter.stop(signal.SIGKILL)
    cs.stop()


def rejected_within(port: int, ip: str, timeout: float) -> float | None:
    """Seconds until a new session from `ip` is rejected, None if it never was."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if blocked(session(port, ip, rcpts=["bob@example.org"])):
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def test_one_trap_recipient_gets_the_sender_rejected_next_time(trap_node, capsys) -> None:
    cs, milter, postfix = trap_node
    spammer, harvester, bystander = "198.51.100.140", "198.51.100.141", "192.0.2.140"
    assert delivered(session(postfix.port, spammer, rcpts=["bob@example.org"]))
    # the trap mailbox exists: Postfix accepts it, the milter does not change that
    hit = time.monotonic()
    t = session(postfix.port, spammer, rcpts=["trap@example.org"])
    assert t.rcpt_codes == [250] and t.code("<message>") == 250, t.text()
    took = rejected_within(postfix.port, spammer, timeout=30)
    assert took is not None, cs.log_tail()
    loop = time.monotonic() - hit
    with capsys.disabled():
        print(f"\n  spam trap: trap RCPT to rejection {loop:.1f} s "
              "(--update-frequency 1)")
    # a trap that is an unknown user: Postfix rejects it, the hit counts all the same
    t = session(postfix.port, harvester, rcpts=["spamtrap-7@example.org"])
    assert t.rcpt_codes == [550], t.text()
    assert rejected_within(postfix.port, harvester, timeout=30) is not None, cs.log_tail()
    assert delivered(session(postfix.port, bystander, rcpts=["bob@example.org"]))
    traps = [e for e in events(milter) if e["event"] == "rcpt_trap"]
    assert [(e["client_ip"], e["rcpt"], e["accepted"]) for e in traps] == [
        (spammer, "<trap@example.org>", True), (harvester, "<spamtrap-7@example.org>", False)]
    assert traps[1]["status"] == "5.1.1" and "User unknown" in traps[1]["reason"]
    scenarios = {d["value"]: d["scenario"] for d in cs.decisions()}
    assert scenarios[spammer] == scenarios[harvester] == "crowdsec-milter/spam-trap"
    assert bystander not in scenarios
