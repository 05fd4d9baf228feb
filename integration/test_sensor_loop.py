"""The detection loop on real software: probes through a real Postfix become crowdsec-milter
events, a real CrowdSec agent reading them with the shipped parser and scenarios bans the
prober, and the milter rejects it; across two MTA nodes that share one LAPI too."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventschema import read_events
from milter_process import MilterProcess
from real_crowdsec import CrowdSec
from real_postfix import Postfix, Transcript, session
from waiting import eventually

pytestmark = pytest.mark.integration


class MtaNode:
    """Postfix + crowdsec-milter writing its event log where a CrowdSec agent reads it."""

    def __init__(self, workdir: Path, lapi: CrowdSec, name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.milter = MilterProcess(workdir, lapi.lapi_url, lapi.add_bouncer(name),
                                    "--update-frequency", "1")
        self.milter.events.touch()
        self.milter.start()
        self.postfix = Postfix(workdir / "postfix", f"inet:127.0.0.1:{self.milter.port}",
                               hostname=f"{name}.example").start()

    def probe(self, ip: str, rcpts: list[str | bytes]) -> Transcript:
        return session(self.postfix.port, ip, rcpts=rcpts, data=False)

    def rejected(self, ip: str) -> bool:
        t = session(self.postfix.port, ip, rcpts=["bob@example.org"])
        return t.code("MAIL") == 550 and "blocked by CrowdSec" in t.text()

    def events(self) -> list[dict]:
        return read_events(self.milter.events)

    def stop(self) -> None:
        self.postfix.stop()
        self.milter.stop(signal.SIGKILL)


@pytest.fixture
def node_a(tmp_path: Path) -> Iterator[tuple[CrowdSec, MtaNode]]:
    events = tmp_path / "a" / "events.log"
    events.parent.mkdir(parents=True)
    events.touch()
    cs = CrowdSec(tmp_path / "cs-a", name="a").start(acquis=events)
    node = MtaNode(tmp_path / "a", cs, "node-a")
    yield cs, node
    node.stop()
    cs.stop()


def wait_rejected(node: MtaNode, ip: str, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if node.rejected(ip):
            return time.monotonic() - started
        time.sleep(0.25)
    return None


def agent_caught_up(cs: CrowdSec, node: MtaNode, control: str) -> None:
    """Probe from `control` (a plain dictionary attack), after the lines under test, and
    wait until the agent bans it: it reads the event log in order, so by then it has
    parsed and bucketed every line before (instead of sleeping and hoping it had)."""
    for batch in range(4):
        node.probe(control, [f"control{batch}-{i}@example.org" for i in range(5)])
    assert eventually(lambda: any(d["value"] == control for d in cs.decisions()),
                      timeout=25, step=0.5), cs.log_tail()


def test_dictionary_attack_gets_the_attacker_rejected(node_a, capsys) -> None:
    cs, node = node_a
    attacker, bystander = "198.51.100.66", "192.0.2.77"
    assert not node.rejected(attacker)
    first_probe = time.monotonic()
    for batch in range(4):
        t = node.probe(attacker, [f"guess{batch}-{i}@example.org" for i in range(5)])
        assert t.rcpt_codes == [550] * 5, t.text()
    took = wait_rejected(node, attacker, timeout=20)
    assert took is not None, cs.log_tail()
    loop = time.monotonic() - first_probe
    with capsys.disabled():
        print(f"\n  detection loop: first probe to first rejection {loop:.1f} s")
    assert not node.rejected(bystander)
    decisions = [d for d in cs.decisions() if d["value"] == attacker]
    assert decisions and decisions[0]["scenario"] == "crowdsec-milter/dictionary-attack"
    events = node.events()
    rejected = [e for e in events if e["event"] == "rcpt_rejected"]
    assert len(rejected) >= 20 and {e["client_ip"] for e in rejected} == {attacker}
    assert {e["status"] for e in rejected} == {"5.1.1"}
    assert all(e["mta"] == "node-a.example" for e in rejected)
    assert any(e["event"] == "client_blocked" and e["client_ip"] == attacker for e in events)


def test_a_few_typos_are_not_banned(node_a) -> None:
    cs, node = node_a
    legit = "192.0.2.88"
    for _ in range(5):
        t = node.probe(legit, ["bob@example.org", "bbo@example.org", "alcie@example.org"])
        assert t.rcpt_codes == [250, 550, 550]
    agent_caught_up(cs, node, "198.51.100.90")
    assert not node.rejected(legit)
    assert [d for d in cs.decisions() if d["value"] == legit] == []


def test_hostile_recipients_frame_nobody_and_forge_no_line(node_a) -> None:
    cs, node = node_a
    attacker, framed = "198.51.100.67", "192.0.2.99"
    hostile: list[str | bytes] = [
        'a","client_ip":"192.0.2.99@example.org',
        'b\\","client_ip\\":\\"192.0.2.99@example.org',
        '"c\\"}{\\"client_ip\\":\\"192.0.2.99"@example.org',
        b"d\xff\xfe\xc3@example.org",
        "e%0d%0a{\"client_ip\":\"192.0.2.99\"}@example.org",
        "192.0.2.99@example.org",
    ]
    for i in range(4):
        node.probe(attacker, [h + str(i).encode() if isinstance(h, bytes) else f"{i}{h}"
                              for h in hostile])
    control = "198.51.100.91"
    agent_caught_up(cs, node, control)
    events = node.events()  # one JSON object per line, every line, as the schema says
    for event in events:
        assert event["client_ip"] in (attacker, control), event
    assert any(event["client_ip"] == attacker for event in events)
    assert [d for d in cs.decisions() if d["value"] == framed] == []
    assert not node.rejected(framed)


def test_two_mta_nodes_share_one_lapi(tmp_path: Path, capsys) -> None:
    events_a = tmp_path / "a" / "events.log"
    events_b = tmp_path / "b" / "events.log"
    for f in (events_a, events_b):
        f.parent.mkdir(parents=True)
        f.touch()
    lapi = CrowdSec(tmp_path / "cs-a", name="a").start(acquis=events_a)
    agent_b = CrowdSec(tmp_path / "cs-b", name="b").agent_only(lapi, events_b)
    node_a = MtaNode(tmp_path / "a", lapi, "node-a")
    node_b = MtaNode(tmp_path / "b", lapi, "node-b")
    try:
        attacker = "198.51.100.70"
        started = time.monotonic()
        for batch in range(4):
            node_b.probe(attacker, [f"b{batch}-{i}@example.org" for i in range(5)])
        took = wait_rejected(node_a, attacker, timeout=25)
        assert took is not None, agent_b.log_tail()
        with capsys.disabled():
            took = time.monotonic() - started
            print(f"\n  two nodes: probes on B to rejection on A {took:.1f} s")
        # node B pulls on its own schedule (--update-frequency 1): give it that long
        assert wait_rejected(node_b, attacker, timeout=5) is not None
        assert not any(e["event"] == "rcpt_rejected" for e in node_a.events())
    finally:
        node_a.stop()
        node_b.stop()
        agent_b.stop()
        lapi.stop()
