"""Operations on the real program: metrics and /health, SIGHUP reload, check and lookup,
and postmaster reachable for banned clients at the rcpt stage."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from lapi_server import FakeLapi, Fault
from milter_process import EXE, MilterProcess, Mta, metric, scrape
from ports import free_port
from waiting import eventually


@pytest.fixture
def started(tmp_path: Path, fake_lapi: tuple[FakeLapi, str]):
    lapi, url = fake_lapi
    procs: list[MilterProcess] = []

    def start(*args: str, wait: str | None = "decision(s) held") -> MilterProcess:
        proc = MilterProcess(tmp_path, url, "test-key", *args).start(wait)
        procs.append(proc)
        return proc

    yield lapi, url, start
    for proc in procs:
        proc.stop(signal.SIGKILL)


def test_metrics_and_health(started) -> None:
    lapi, _, start = started
    lapi.add("203.0.113.7")
    lapi.add("2001:db8::/32", scope="Range")
    port = free_port()
    proc = start("--metrics-listen", f"127.0.0.1:{port}", "--update-frequency", "0.2")
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(base + "/health").status_code == 200
    for ip in ("203.0.113.7", "192.0.2.1", "192.0.2.2"):
        mta = Mta(proc.port)
        mta.connect(ip)
        mta.close()
    text = httpx.get(base + "/metrics").text
    assert metric(text, "crowdsec_milter_sessions_total") == 3
    assert 'crowdsec_milter_blocks_total{action="reject",origin="cscli",stage="connect",' \
           'type="ban"} 1.0' in text
    assert metric(text, 'crowdsec_milter_lookups_total{result="clean"}') == 2
    assert 'crowdsec_milter_decisions{family="ipv4",scope="Ip"} 1.0' in text
    assert 'crowdsec_milter_decisions{family="ipv6",scope="Range"} 1.0' in text
    assert metric(text, "crowdsec_milter_seconds_since_last_pull") < 5
    assert "test-key" not in text
    lapi.fault = Fault(status=500)
    assert eventually(lambda: scrape(port, 'crowdsec_milter_lapi_errors_total{kind="http"}')
                      >= 1)
    assert httpx.get(base + "/health").status_code == 200  # last good decisions still held


def test_health_503_before_first_sync(started) -> None:
    lapi, _, start = started
    lapi.fault = Fault(status=500)
    port = free_port()
    start("--metrics-listen", f"127.0.0.1:{port}", wait="stream pull failed")
    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 503


def test_sighup_reloads_config_and_refuses_a_bad_one(started, tmp_path: Path) -> None:
    lapi, _, start = started
    lapi.add("203.0.113.7")
    conf = tmp_path / "milter.conf"
    conf.write_text("stage = connect\n")
    proc = start("-c", str(conf))
    assert Mta(proc.port).connect("203.0.113.7")[0] == "reject"
    conf.write_text("stage = connect\naction = [ban=tempfail]\n")
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: "reloaded" in proc.log()), proc.log()
    assert Mta(proc.port).connect("203.0.113.7")[0] == "tempfail"
    conf.write_text("stage = nowhere\n")
    proc.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: "reload refused" in proc.log()), proc.log()
    assert "reload refused" in proc.log() and "--stage" in proc.log()
    assert proc.proc.poll() is None  # still running, old config kept
    assert Mta(proc.port).connect("203.0.113.7")[0] == "tempfail"


def test_postmaster_reachable_for_banned_clients_at_rcpt_stage(started) -> None:
    lapi, _, start = started
    lapi.add("203.0.113.7")
    proc = start("--stage", "rcpt")
    mta = Mta(proc.port)
    mta.connect("203.0.113.7")
    mta.helo("x")
    mta.mail("<a@b>")
    assert mta.rcpt("<Postmaster@example.org>")[0] == "continue"
    assert mta.rcpt("<abuse@example.org>")[0] == "continue"
    assert mta.rcpt("<bob@example.org>")[0] == "reject"
    mta.close()


def run_tool(*args: str, url: str, key: str = "test-key") -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args, "--lapi-url", url, "--api-key", key],
                          capture_output=True, text=True, timeout=30)


def test_check_and_lookup(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.add("203.0.113.0/24", scope="Range", scenario="crowdsecurity/postfix-spam")
    result = run_tool("check", url=url)
    assert result.returncode == 0 and "accepted" in result.stdout, result.stdout
    assert "active decisions: 1 (ban Range: 1)\n" in result.stdout
    lapi.add("2001:db8::7", type_="captcha")
    lapi.add("203.0.113.8")
    lapi.add("AS64496", scope="AS")
    lapi.add("not-an-ip")
    result = run_tool("check", url=url)
    assert "active decisions: 3 (ban Ip: 1, ban Range: 1, captcha Ip: 1); " \
           "1 AS (not used: no --geoip-asn-db); 1 unusable (skipped)" in result.stdout, \
        result.stdout
    result = run_tool("check", url=url, key="wrong")
    assert result.returncode == 1 and "FAILED (auth)" in result.stdout
    assert "wrong" not in result.stdout.replace("FAILED", "")
    result = run_tool("lookup", "203.0.113.9", url=url)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "scope=Range value=203.0.113.0/24" in result.stdout
    assert "reject at connect" in result.stdout and "550 5.7.1" in result.stdout
    result = run_tool("lookup", "192.0.2.1", url=url)
    assert result.returncode == 0 and "no decision" in result.stdout
    assert lapi.count("/v1/decisions/stream") == 0  # never touches the stream cursor
    result = run_tool("check", url="http://127.0.0.1:9/")
    assert result.returncode == 1 and "unreachable" in result.stdout


def test_tools_ask_only_what_cannot_move_a_slow_milters_cursor(
        fake_lapi: tuple[FakeLapi, str]) -> None:
    """With pulls over 30 s apart, a GET /v1/decisions with the milter's key could move its
    stream cursor (LAPI does at a minute): the tools then check the key with HEAD only."""
    lapi, url = fake_lapi
    lapi.add("203.0.113.9")
    slow = ("--update-frequency", "90")
    result = run_tool("check", *slow, url=url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bouncer credentials: accepted" in result.stdout
    assert "active decisions: not read: with --update-frequency 90" in result.stdout
    result = run_tool("check", *slow, url=url, key="wrong")
    assert result.returncode == 1 and "FAILED (auth)" in result.stdout
    result = run_tool("lookup", "203.0.113.9", *slow, url=url)
    assert result.returncode == 1 and "not read" in result.stdout, result.stdout
    assert [p for p, _, _ in lapi.requests if "decisions" in p] == ["HEAD /v1/decisions"] * 2
    # a key no stream consumer uses (--mode live): decisions are read
    result = run_tool("lookup", "203.0.113.9", *slow, "--mode", "live", url=url)
    assert result.returncode == 3 and "value=203.0.113.9" in result.stdout, result.stdout


def test_usage_metrics_payload_follows_the_lapi_contract(fake_lapi) -> None:
    from crowdsec_milter.lapi import LapiClient
    from crowdsec_milter.source import StreamSource
    from crowdsec_milter.tally import SESSIONS, Tally, blocked
    from crowdsec_milter.usage import UsagePusher

    lapi, url = fake_lapi
    lapi.add("203.0.113.7")
    client = LapiClient(url, "test-key", 2.0)
    source = StreamSource(client, 10.0)
    assert source.pull_once()
    tally = Tally()
    for _ in range(5):
        tally.inc(SESSIONS)
    tally.inc(blocked("ban", "crowdsec", "connect", "reject"), n=2)
    tally.inc(blocked("ban", "crowdsec", "connect", "none"))  # dry run: not dropped
    pusher = UsagePusher(client, tally, source, interval=60)
    assert pusher.push_once()
    doc = lapi.usage_posts[-1]
    (component,) = doc["remediation_components"]
    assert component["type"] == "crowdsec-milter" and component["feature_flags"] == []
    (window,) = component["metrics"]
    assert window["meta"]["window_size_seconds"] == 60
    items = {(i["name"], tuple(sorted(i.get("labels", {}).items()))): i for i in window["items"]}
    assert all("unit" in i for i in window["items"])
    assert items[("dropped", (("origin", "crowdsec"), ("remediation", "ban")))]["value"] == 2
    assert items[("processed", ())]["value"] == 5
    assert items[("active_decisions", ())]["value"] == 1
    tally.inc(SESSIONS)
    assert pusher.push_once()
    items = {i["name"]: i for i in lapi.usage_posts[-1]["remediation_components"][0]
             ["metrics"][0]["items"]}
    assert items["processed"]["value"] == 1 and "dropped" not in items  # per window
    lapi.usage_status = 404
    assert not pusher.push_once() and pusher.unsupported
    client.close()


def test_sighup_with_an_unusable_config_file_keeps_the_old_config(started,
                                                                   tmp_path: Path) -> None:
    """Bad bytes, a deleted file, a directory, a broken line, a bad value: each reload is
    refused with one log line, and the milter keeps answering with the config it had."""
    lapi, _, start = started
    lapi.add("203.0.113.7")
    conf = tmp_path / "milter.conf"
    conf.write_text("action = [ban=tempfail]\n")
    proc = start("-c", str(conf))
    assert proc.proc is not None
    assert Mta(proc.port).connect("203.0.113.7")[0] == "tempfail"

    def bad_bytes() -> None:
        conf.write_bytes(b"action = [ban=reject]\n# caf\xe9\n")

    def deleted() -> None:
        conf.unlink()

    def directory() -> None:
        conf.mkdir()

    def broken_line() -> None:
        conf.rmdir()
        conf.write_text("action = [ban=reject]\n= oops\n")

    def bad_value() -> None:
        conf.write_text("action = [ban=reject]\ncache-ttl = soon\n")

    for n, spoil in enumerate((bad_bytes, deleted, directory, broken_line, bad_value), 1):
        spoil()
        proc.proc.send_signal(signal.SIGHUP)
        assert eventually(lambda n=n: proc.log().count("reload refused") == n
                          or proc.proc.poll() is not None, 10), spoil.__name__
        assert proc.proc.poll() is None, f"{spoil.__name__}: milter died: {proc.log()[-2000:]}"
        refused = [x for x in proc.log().splitlines() if "reload refused" in x]
        assert len(refused) == n and (str(conf) in refused[-1] or "--cache-ttl" in refused[-1])
        assert Mta(proc.port).connect("203.0.113.7")[0] == "tempfail", spoil.__name__
    assert "Traceback" not in proc.log()


def test_metrics_on_ipv6_loopback(started) -> None:
    _, _, start = started
    port = free_port()
    start("--metrics-listen", f"[::1]:{port}")
    assert httpx.get(f"http://[::1]:{port}/health").status_code == 200


def test_metrics_port_in_use_is_one_line_and_a_failed_start(fake_lapi, tmp_path: Path) -> None:
    import socket

    _, url = fake_lapi
    key = tmp_path / "key"
    key.write_text("test-key\n")
    key.chmod(0o600)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [EXE, "--socket", f"inet:{free_port()}@127.0.0.1", "--lapi-url", url,
             "--api-key-file", str(key), "--event-log", "none",
             "--metrics-listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], lines[0]
