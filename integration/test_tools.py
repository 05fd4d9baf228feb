"""The operator tools against Debian's real CrowdSec LAPI: `check` counts what LAPI holds,
`lookup` says what the milter would answer, and neither steals a running milter's delta."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from milter_process import EXE, MilterProcess, verdict
from real_crowdsec import CrowdSec
from waiting import eventually

pytestmark = pytest.mark.integration


def tool(*args: str, url: str, key_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args, "--lapi-url", url, "--api-key-file", str(key_file)],
                          capture_output=True, text=True, timeout=60)


def test_check_and_lookup_on_real_lapi(tmp_path: Path) -> None:
    from crowdsec_milter.decisions import parse_address
    from crowdsec_milter.lapi import LapiClient
    from crowdsec_milter.source import StreamSource

    cs = CrowdSec(tmp_path / "cs").start()
    try:
        key = cs.add_bouncer("milter")
        key_file = tmp_path / "key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)

        result = tool("check", url=cs.lapi_url, key_file=key_file)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "active decisions: 0\n" in result.stdout

        # A running stream-mode milter on the same key: its startup pull, then the tools.
        client = LapiClient(cs.lapi_url, key, 5.0)
        source = StreamSource(client, 10.0)
        assert source.pull_once()
        cs.add_decision(ip="203.0.113.5")
        cs.add_decision(range_="198.51.100.0/24", type_="captcha")
        cs.add_decision(ip="2001:db8::5")

        result = tool("check", url=cs.lapi_url, key_file=key_file)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "active decisions: 3 (ban Ip: 2, captcha Range: 1)\n" in result.stdout
        assert key not in result.stdout + result.stderr

        result = tool("lookup", "198.51.100.77", url=cs.lapi_url, key_file=key_file)
        assert result.returncode == 3, result.stdout + result.stderr
        assert "type=captcha scope=Range value=198.51.100.0/24" in result.stdout
        assert "tempfail at connect" in result.stdout and "451 4.7.1" in result.stdout
        result = tool("lookup", "192.0.2.200", url=cs.lapi_url, key_file=key_file)
        assert result.returncode == 0 and "no decision covers this address" in result.stdout

        # The milter's next delta still brings all three: the tools left its cursor alone.
        assert source.pull_once()
        for ip in ("203.0.113.5", "198.51.100.77", "2001:db8::5"):
            k = parse_address(ip)
            assert k is not None and source.lookup(*k), ip
        client.close()

        result = tool("check", url=cs.lapi_url, key_file=tmp_path / "missing")
        assert result.returncode == 2 and "--api-key-file" in result.stderr
        key_file.write_text("not-the-key\n")
        result = tool("check", url=cs.lapi_url, key_file=key_file)
        assert result.returncode == 1 and "FAILED (auth)" in result.stdout
    finally:
        cs.stop()


def last_pull_age(cs: CrowdSec, bouncer: str) -> float:
    """Seconds since LAPI last moved `bouncer`'s stream cursor, as `cscli bouncers list`
    reports it."""
    rows = json.loads(cs.cscli("bouncers", "list", "-o", "json"))
    stamp = next(r["last_pull"] for r in rows if r["name"] == bouncer)
    head, _, frac = stamp.rstrip("Z").partition(".")
    pulled = datetime.fromisoformat(head).replace(tzinfo=UTC)
    return (datetime.now(UTC) - pulled).total_seconds() - float("0." + (frac or "0"))


def test_tools_never_steal_a_slow_milters_delta(tmp_path: Path) -> None:
    """With --update-frequency 90 the milter's last pull is over a minute old between
    pulls, and LAPI then moves its cursor on a GET /v1/decisions with its key: a check or
    lookup at that moment must still leave the milter its next delta."""
    cs = CrowdSec(tmp_path / "cs").start()
    milter = None
    try:
        key = cs.add_bouncer("milter")
        key_file = tmp_path / "key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        milter = MilterProcess(tmp_path, cs.lapi_url, key, "--update-frequency", "90").start()
        # The next pull is 90 s after the startup pull: wait until LAPI counts the last
        # one as a minute old (about 62 s), the state in which a GET moves the cursor.
        assert eventually(lambda: last_pull_age(cs, "milter") > 61, timeout=80, step=1.0)
        banned = "203.0.113.77"
        cs.add_decision(ip=banned)
        for args, codes in ((("check",), (0,)), (("lookup", banned), (1, 3))):
            result = tool(*args, "--update-frequency", "90", url=cs.lapi_url,
                          key_file=key_file)
            assert result.returncode in codes, result.stdout + result.stderr
            assert key not in result.stdout + result.stderr
        # The milter's next delta (about 30 s from here) must bring the ban.
        assert eventually(lambda: verdict(milter, banned) == "reject", timeout=60, step=1.0), \
            "the milter never got the decision added before check and lookup ran"
    finally:
        if milter is not None:
            milter.stop(signal.SIGKILL)
        cs.stop()




def test_check_and_lookup_show_decisions_on_logins(tmp_path: Path) -> None:
    cs = CrowdSec(tmp_path / "cs").start()
    try:
        key_file = tmp_path / "key"
        key_file.write_text(cs.add_bouncer("tools") + "\n")
        key_file.chmod(0o600)
        cs.cscli("decisions", "add", "--scope", "username", "--value", "alice",
                 "--duration", "10m", "--reason", "crowdsec-milter/account-roaming")
        cs.add_decision(ip="203.0.113.5")
        live = ("--mode", "live")
        result = tool("check", *live, url=cs.lapi_url, key_file=key_file)
        assert "active decisions: 1 (ban Ip: 1); 1 username (not used: no " \
               "--account-decisions)" in result.stdout, result.stdout
        result = tool("check", *live, "--account-decisions", url=cs.lapi_url,
                      key_file=key_file)
        assert "active decisions: 2 (ban Ip: 1, ban username: 1)" in result.stdout
        result = tool("lookup", "user:alice", *live, "--account-decisions", url=cs.lapi_url,
                      key_file=key_file)
        assert result.returncode == 3, result.stdout + result.stderr
        assert "scope=username value=alice origin=cscli" in result.stdout
        assert "milter answer: reject at mail: 550 5.7.1 account alice is locked" in \
            result.stdout
        result = tool("lookup", "user:alice", *live, url=cs.lapi_url, key_file=key_file)
        assert result.returncode == 0 and "no --account-decisions" in result.stdout
        result = tool("lookup", "user:bob", *live, "--account-decisions", url=cs.lapi_url,
                      key_file=key_file)
        assert result.returncode == 0 and "no decision on login bob" in result.stdout
    finally:
        cs.stop()
