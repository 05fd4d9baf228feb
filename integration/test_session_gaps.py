"""What a hostile client tried through a real Postfix and the real LAPI (issue 21: defects 1,
4, 10 and 13): skipping HELO at --stage helo, a reply longer than libmilter takes, an
unqualified Postmaster at --stage rcpt, spam-trap addresses written another way."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eventschema import read_events
from milter_process import EXE, MilterProcess
from ports import free_port
from real_crowdsec import CrowdSec
from real_postfix import LOCAL_USERS, Postfix, delivered, session
from waiting import eventually

pytestmark = pytest.mark.integration

BANNED = "203.0.113.61"  # a plain ban
LONG = "203.0.113.62"  # a ban whose scenario is 100 two-byte characters
CLEAN = "192.0.2.61"
SCENARIO = "é" * 100
# fits libmilter's 980 bytes in characters, not in bytes once the scenario is filled in
LONG_REPLY = "550 5.7.1 %(scenario)s " + "x" * 850
AT_LIMIT = "550 5.7.1 " + "y" * 978 + "%%"  # 980 bytes: the '%' goes out doubled

MILTERS = {  # name: extra flags; each gets a smtpd listener of its own
    "helo": ("--stage", "helo"),
    "helo-bouncer": ("--stage", "helo", "--event-log", "none"),
    "helo-drop": ("--stage", "helo", "--action", "ban=drop"),
    "helo-drop-bouncer": ("--stage", "helo", "--action", "ban=drop", "--event-log", "none"),
    "rcpt": ("--stage", "rcpt", "--trap-rcpt", "trap@example.org"),
    "long-reply": ("--stage", "mail", "--reject-reply", LONG_REPLY),
    "at-limit": ("--stage", "mail", "--reject-reply", AT_LIMIT),
}


@dataclass
class Site:
    postfix: Postfix
    milters: dict[str, MilterProcess]
    ports: dict[str, int]


@pytest.fixture(scope="module")
def site(lapi: CrowdSec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One Postfix with a listener per milter configuration; `trap` is a real mailbox."""
    lapi.add_decision(ip=BANNED, duration="2h")
    lapi.add_decision(ip=LONG, duration="2h", reason=SCENARIO)
    root = tmp_path_factory.mktemp("gaps")
    milters: dict[str, MilterProcess] = {}
    try:
        for name, flags in MILTERS.items():
            (root / name).mkdir()
            milters[name] = MilterProcess(root / name, lapi.lapi_url,
                                          lapi.add_bouncer(f"gaps-{name}"),
                                          *flags).start()
        ports = {name: free_port() for name in MILTERS}
        users = ", ".join(f"{u}=ok" for u in (*LOCAL_USERS, "trap"))
        postfix = Postfix(root / "postfix", None,
                          services={ports[n]: f"inet:127.0.0.1:{m.port}"
                                    for n, m in milters.items()},
                          extra={"local_recipient_maps": f"inline:{{{users}}}"}).start()
        yield Site(postfix, milters, ports)
        postfix.stop()
    finally:
        for m in milters.values():
            m.stop(signal.SIGKILL)


@pytest.mark.parametrize("name", ["helo", "helo-bouncer", "helo-drop", "helo-drop-bouncer"])
def test_stage_helo_blocks_a_client_that_skips_helo(site: Site, name: str) -> None:
    port = site.ports[name]
    drop = "drop" in name
    for helo in ("evil.example", None):
        t = session(port, BANNED, helo=helo, rcpts=["bob@example.org"])
        if drop:  # 421 and the connection closed, at HELO or at MAIL when HELO was skipped
            assert t.closed and t.replies[-1][1] == 421, t.text()
            assert t.replies[-1][0] == ("EHLO" if helo else "MAIL"), t.text()
        else:
            assert t.code("MAIL") == 550 and "blocked by CrowdSec" in t.text(), t.text()
        assert t.code("<message>") is None, t.text()
    # a clean client that skips HELO still gets its mail through
    assert delivered(session(port, CLEAN, helo=None, rcpts=["bob@example.org"]))
    milter = site.milters[name]
    assert eventually(lambda: milter.log().count(f"client={BANNED} ") == 2), milter.log()
    stages = [line.rsplit("stage=", 1)[1].split()[0] for line in milter.log().splitlines()
              if f"client={BANNED} " in line]
    assert stages == ["helo", "mail"]


def test_unqualified_postmaster_reaches_postmaster_at_stage_rcpt(site: Site) -> None:
    port = site.ports["rcpt"]
    for rcpt in ("Postmaster", "postmaster", "POSTMASTER"):
        t = session(port, BANNED, rcpts=[rcpt, "bob@example.org"])
        assert t.rcpt_codes == [250, 550], t.text()
        assert t.code("<message>") == 250, t.text()  # the message goes to postmaster only


def test_a_trap_written_another_way_is_still_the_trap(site: Site) -> None:
    port = site.ports["rcpt"]
    variants = ['"trap"@example.org', "trap@example.org.", "@relay.example.net:trap@example.org",
                "trap@EXAMPLE.org", "trap@example.org"]
    for i, rcpt in enumerate(variants):
        t = session(port, f"192.0.2.{70 + i}", rcpts=[rcpt])
        assert t.rcpt_codes == [250] and t.code("<message>") == 250, t.text()
    milter = site.milters["rcpt"]

    def traps() -> list[tuple[str, str]]:
        return [(e["client_ip"], e["rcpt"]) for e in read_events(milter.events)
                if e["event"] == "rcpt_trap"]

    expected = [(f"192.0.2.{70 + i}", f"<{rcpt}>") for i, rcpt in enumerate(variants)]
    assert eventually(lambda: traps() == expected), (traps(), milter.log()[-3000:])


def test_a_long_filled_reply_is_cut_to_fit_and_the_client_is_still_rejected(site: Site) -> None:
    t = session(site.ports["long-reply"], LONG, rcpts=["bob@example.org"])
    assert t.code("MAIL") == 550, t.text()
    assert t.code("<message>") is None
    assert "cannot set reply" not in site.milters["long-reply"].log()
    # a reply of exactly libmilter's 980 bytes goes through whole
    t = session(site.ports["at-limit"], BANNED, rcpts=["bob@example.org"])
    assert t.code("MAIL") == 550 and "y" * 978 + "%" in t.text(), t.text()


def test_a_reply_that_can_never_fit_stops_start_up(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k" * 20 + "\n")
    key.chmod(0o600)
    out = subprocess.run([EXE, "--api-key-file", str(key), "--reject-reply",
                          "550 5.7.1 " + "x" * 1010], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--reject-reply" in lines[0] and "980" in lines[0], out.stderr
