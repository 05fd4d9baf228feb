"""--state-file end to end: real CrowdSec, the real milter program, a real Postfix. A milter
restarted while LAPI is down keeps the bans it had, from the first session on, and drops
the ones that expired while it was down."""

from __future__ import annotations

import signal
import stat
import time
from pathlib import Path

import pytest
from milter_process import MilterProcess, verdict
from nodes import Node
from real_crowdsec import CrowdSec
from real_postfix import blocked, delivered
from waiting import eventually

pytestmark = pytest.mark.integration

KEPT, SHORT, LATE, CLEAN = "203.0.113.71", "203.0.113.72", "198.51.100.0/24", "203.0.113.74"


def test_bans_survive_a_restart_with_lapi_down(tmp_path: Path) -> None:
    cs = CrowdSec(tmp_path / "cs").start()
    state = tmp_path / "state" / "decisions.state"
    state.parent.mkdir()
    cs.add_decision(ip=KEPT, duration="1h")
    cs.add_decision(ip=SHORT, duration="25s")  # expires while the milter is down
    short_until = time.monotonic() + 25.0
    node = Node(tmp_path / "node", cs, "milter", "--update-frequency", "1",
                "--state-file", str(state))
    try:
        assert blocked(node.send(KEPT)) and blocked(node.send(SHORT))
        assert eventually(state.exists)  # written after the first pull
        cs.add_decision(range_=LATE, duration="1h")  # after that write: a delta brings it
        assert eventually(lambda: blocked(node.send("198.51.100.9")), timeout=15)
        node.milter.stop(signal.SIGTERM)  # as systemctl restart does
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert node.key not in state.read_bytes().decode("latin-1")
        cs.stop()  # LAPI down from here on
        assert eventually(lambda: time.monotonic() > short_until + 1.0, timeout=40, step=0.5)
        node.milter.start(wait_ready=None)  # same port, same state file; LAPI is down
        # the very first session after the start: the socket listens only once the
        # state file is loaded
        first = node.send(KEPT)
        assert blocked(first), first.text() + node.milter.log()[-3000:]
        assert blocked(node.send("198.51.100.200"))  # the range added after the first write
        assert delivered(node.send(SHORT)), node.milter.log()[-3000:]  # expired meanwhile
        assert delivered(node.send(CLEAN))
        log = node.milter.log()
        assert f"state file {state} refused (no such file" in log  # at the first start
        log = log.split(" starting: ")[-1]  # the second start
        assert f"state file {state} refused" not in log
        assert f"state file {state}: 2 decision(s) loaded" in log, log[-3000:]
        assert "1 expired since, dropped" in log
        assert "stream pull failed (connect)" in log  # LAPI really was down
    finally:
        node.stop()
        cs.stop()
    # the same restart without the file: LAPI is down, so the ban is not known
    (tmp_path / "bare-run").mkdir()
    bare = MilterProcess(tmp_path / "bare-run", cs.lapi_url, node.key, "--state-file", "none")
    bare.start(wait_ready=None)
    try:
        assert verdict(bare, KEPT) == "continue"  # --on-lapi-error accept
    finally:
        bare.stop(signal.SIGKILL)
