"""The real crowdsec-milter program over its socket, driven as an MTA by PyPI's miltertest,
with decisions from a real HTTP server that speaks the LAPI contract."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from eventschema import read_events
from lapi_server import FakeLapi, Fault
from milter_process import MilterProcess, Mta, scrape
from ports import free_port
from waiting import eventually


@pytest.fixture
def milter(tmp_path: Path, fake_lapi: tuple[FakeLapi, str]):
    lapi, url = fake_lapi
    procs: list[MilterProcess] = []

    def start(*args: str, wait: str | None = "decision(s) held", key: str = "test-key"):
        proc = MilterProcess(tmp_path, url, key, *args).start(wait)
        procs.append(proc)
        return proc

    yield lapi, start
    for proc in procs:
        proc.stop(signal.SIGKILL)  # graceful stop has its own test; this saves seconds


def test_banned_client_rejected_clean_client_accepted_at_data(milter) -> None:
    lapi, start = milter
    lapi.add("203.0.113.7")
    lapi.add("2001:db8:bad::/48", scope="Range")
    lapi.add("198.51.100.9", type_="captcha")
    proc = start("--update-frequency", "0.2")
    for ip, expected in (("203.0.113.7", "reject"), ("2001:db8:bad::25", "reject"),
                         ("198.51.100.9", "tempfail"), ("203.0.113.70", "continue"),
                         ("11.2.3.45", "continue")):
        mta = Mta(proc.port)
        verdict, text = mta.connect(ip)
        assert verdict == expected, (ip, text)
        if expected == "reject":
            assert text == f"550 5.7.1 {ip} is blocked by CrowdSec"
        if expected == "continue":
            assert mta.helo("client.example") == ("noreply", "")
            assert mta.mail("<a@example.net>") == ("noreply", "")
            assert mta.rcpt("<bob@example.org>") == ("noreply", "")
            assert mta.data()[0] == "accept"
        mta.close()
    log = proc.log()
    assert "reject client=203.0.113.7 type=ban scope=Ip value=203.0.113.7" in log
    assert "stage=connect" in log


def test_new_ban_applies_within_the_update_interval(milter) -> None:
    lapi, start = milter
    proc = start("--update-frequency", "0.2")
    mta = Mta(proc.port)
    assert mta.connect("203.0.113.7")[0] == "continue"
    mta.close()
    pulls = lapi.count("/v1/decisions/stream")
    lapi.add("203.0.113.7")
    # the next pull brings it; then the very next session is rejected
    assert eventually(lambda: lapi.count("/v1/decisions/stream") > pulls + 1)
    mta = Mta(proc.port)
    assert mta.connect("203.0.113.7")[0] == "reject"
    mta.close()


def test_rcpt_stage_and_rejected_recipient_events(milter) -> None:
    lapi, start = milter
    lapi.add("203.0.113.7")
    proc = start("--stage", "rcpt")
    mta = Mta(proc.port)
    assert mta.connect("203.0.113.7")[0] == "noreply"
    assert mta.helo("evil")[0] == "noreply"
    assert mta.mail("<a@b>")[0] == "noreply"
    verdict, text = mta.rcpt("<bob@example.org>")
    assert verdict == "reject" and text.startswith("550 5.7.1")
    mta.close()
    mta = Mta(proc.port)
    mta.connect("192.0.2.5", host="probe.example")
    mta.helo("probe")
    mta.mail("<x@y>")
    assert mta.rcpt("<nobody@example.org>", {"{rcpt_mailer}": "error", "{rcpt_host}": "5.1.1",
                                              "{rcpt_addr}": "User unknown"})[0] == "continue"
    mta.close()
    proc.stop()  # SIGTERM: the event writer flushes before exit
    events = read_events(proc.events)
    assert [(e["event"], e["client_ip"]) for e in events] == \
        [("client_blocked", "203.0.113.7"), ("rcpt_rejected", "192.0.2.5")]
    assert events[1]["status"] == "5.1.1" and events[1]["rcpt"] == "<nobody@example.org>"


def test_on_lapi_error_before_first_sync(milter) -> None:
    lapi, start = milter
    lapi.fault = Fault(status=500)
    proc = start("--on-lapi-error", "tempfail", wait="stream pull failed")
    verdict, text = Mta(proc.port).connect("203.0.113.7")
    assert (verdict, text) == ("tempfail", "451 4.3.0 Service temporarily unavailable, try later")
    proc2 = start("--on-lapi-error", "accept", wait="stream pull failed")
    assert Mta(proc2.port).connect("203.0.113.7")[0] == "continue"


def test_live_mode(milter) -> None:
    lapi, start = milter
    lapi.add("203.0.113.0/24", scope="Range")
    proc = start("--mode", "live", wait=None)
    for _ in range(3):
        assert Mta(proc.port).connect("203.0.113.7")[0] == "reject"
        assert Mta(proc.port).connect("192.0.2.1")[0] == "continue"
    assert lapi.count("/v1/decisions") == 2


def test_live_cache_stays_within_cache_size(milter) -> None:
    """The cache holds at most --cache-size answers however many addresses come by; the
    metrics endpoint shows how many it holds."""
    lapi, start = milter
    lapi.add("203.0.113.7")
    port = free_port()
    proc = start("--mode", "live", "--cache-size", "3", "--metrics-listen",
                 f"127.0.0.1:{port}", wait=None)
    entries = "crowdsec_milter_cache_entries"
    assert scrape(port, entries) == 0
    assert Mta(proc.port).connect("203.0.113.7")[0] == "reject"
    assert Mta(proc.port).connect("192.0.2.1")[0] == "continue"
    assert scrape(port, entries) == 2
    for i in range(10):
        assert Mta(proc.port).connect(f"192.0.2.{i + 10}")[0] == "continue"
    assert scrape(port, entries) == 3
    assert scrape(port, "crowdsec_milter_cache_size") == 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stops_quickly_on_signal_and_never_logs_the_key(milter, sig: int) -> None:
    lapi, start = milter
    lapi.key = "key-that-must-not-leak"
    proc = start(key="key-that-must-not-leak")
    Mta(proc.port).connect("192.0.2.1")
    assert proc.stop(sig) < 8.0
    assert proc.proc is not None and proc.proc.returncode == 0
    assert "stopped" in proc.log()
    assert "key-that-must-not-leak" not in proc.log()


def test_wrong_key_is_one_clear_line(milter) -> None:
    _, start = milter
    port = free_port()
    proc = start("--metrics-listen", f"127.0.0.1:{port}", "--update-frequency", "0.05",
                 key="wrong-key-value", wait="stream pull failed")
    # several refused pulls (counted by the milter itself), not a sleep one pull may fill
    assert eventually(lambda: scrape(port, 'crowdsec_milter_lapi_errors_total{kind="auth"}')
                      >= 4)
    log = proc.log()
    assert log.count("LAPI refused the API key") == 1, log
    assert "wrong-key-value" not in log


def test_a_run_of_failed_pulls_is_logged_once_and_so_is_the_recovery(milter) -> None:
    """A LAPI down for an hour must not fill the log: one line when pulls start failing,
    one when they work again, and the same for the next outage."""
    lapi, start = milter
    lapi.add("203.0.113.7")
    port = free_port()
    proc = start("--metrics-listen", f"127.0.0.1:{port}", "--update-frequency", "0.05")
    errors = 'crowdsec_milter_lapi_errors_total{kind="http"}'
    pulls = 'crowdsec_milter_lapi_requests_total{mode="stream"}'
    for outage in (1, 2):
        lapi.fault = Fault(status=500)
        before = scrape(port, errors)
        assert eventually(lambda b=before: scrape(port, errors) >= b + 4, timeout=15)
        log = proc.log()
        assert log.count("stream pull failed") == outage, log
        lapi.fault = None
        seen = len(log)
        assert eventually(lambda n=seen: "stream pull works again" in proc.log()[n:],
                          timeout=15)
        done = scrape(port, pulls)
        assert eventually(lambda d=done: scrape(port, pulls) >= d + 3)  # good pulls go on
        log = proc.log()
        assert log.count("stream pull works again") == outage, log
        assert log.count("stream pull failed") == outage, log
    assert Mta(proc.port).connect("203.0.113.7")[0] == "reject"


def test_a_run_of_failed_live_lookups_is_logged_once(milter) -> None:
    lapi, start = milter
    lapi.add("203.0.113.7")
    port = free_port()
    proc = start("--mode", "live", "--metrics-listen", f"127.0.0.1:{port}", wait=None)
    lapi.fault = Fault(status=500)
    for i in range(5):  # distinct addresses: a failed answer is never cached
        assert Mta(proc.port).connect(f"192.0.2.{i + 1}")[0] == "continue"
    assert scrape(port, 'crowdsec_milter_lapi_errors_total{kind="http"}') == 5
    assert proc.log().count("live lookup failed") == 1, proc.log()
    lapi.fault = None
    for i in range(3):
        assert Mta(proc.port).connect(f"192.0.2.{i + 10}")[0] == "continue"
    assert Mta(proc.port).connect("203.0.113.7")[0] == "reject"
    log = proc.log()
    assert log.count("live lookups work again") == 1, log
    assert log.count("live lookup failed") == 1, log
