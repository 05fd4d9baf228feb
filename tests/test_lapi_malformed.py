"""Malformed values in LAPI's answers (issue 21, defect 9): a number longer than Python's
int-from-text limit (4,300 digits) and JSON nested deeper than the decoder's recursion
limit. A decision carrying such a value is skipped and counted; an answer that cannot be
read is a LAPI error with the last good state kept; no traceback anywhere. Against the
tests' own LAPI server (a real CrowdSec never sends these)."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
from crowdsec_milter.decisions import parse_address
from crowdsec_milter.lapi import LapiClient
from crowdsec_milter.source import LiveSource, StreamSource
from lapi_server import FakeLapi, Fault
from milter_process import EXE, MilterProcess, verdict
from waiting import eventually

HUGE = "9" * 5000  # digits: over the 4,300 int<->str conversion limit


def ask(src: StreamSource | LiveSource, ip: str) -> list[int] | None:
    family, number, text = parse_address(ip)  # type: ignore[misc]
    found = src.lookup(family, number, text)
    return None if found is None else [d.id for d in found]


def decision(ident: int | str, value: str, duration: str = "4h") -> str:
    """One decision as LAPI writes it; `ident` is written as is (a 5,000-digit number)."""
    return (f'{{"id": {ident}, "origin": "cscli", "type": "ban", "scope": "Ip", '
            f'"value": "{value}", "duration": "{duration}", "scenario": "test", '
            '"simulated": false}')


def bad_decisions() -> list[str]:
    """A huge duration (hours, minutes, seconds) and a huge id, each on its own decision."""
    return [decision(901, "198.51.100.1", HUGE + "h"),
            decision(902, "198.51.100.2", "1h" + HUGE + "m"),
            decision(903, "2001:db8::3", HUGE + "s"),
            decision(HUGE, "198.51.100.4")]


def array(*items: str) -> bytes:
    return ("[" + ", ".join(items) + "]").encode()


NESTED = b'{"new": [' + b"[" * 100_000 + b"]" * 100_000 + b'], "deleted": null}'


def stream_body(*items: str) -> bytes:
    return ('{"new": [' + ", ".join(items) + '], "deleted": null}').encode()


def test_startup_skips_and_counts_decisions_with_huge_numbers(
        fake_lapi: tuple[FakeLapi, str], caplog: pytest.LogCaptureFixture) -> None:
    lapi, url = fake_lapi
    lapi.startup_body = stream_body(decision(7, "203.0.113.7"), *bad_decisions(),
                                    decision(8, "203.0.113.8"))
    src = StreamSource(LapiClient(url, "test-key", 2.0), 10.0)
    with caplog.at_level(logging.INFO):
        assert src.pull_once()
    assert ask(src, "203.0.113.7") == [7] and ask(src, "203.0.113.8") == [8]
    assert ask(src, "198.51.100.1") == [] and ask(src, "198.51.100.4") == []
    assert src.stats().bad_decisions == 4
    assert "Traceback" not in caplog.text
    # the skip is logged without the 5,000 digits
    assert max(len(r.getMessage()) for r in caplog.records) < 400


def test_delta_with_huge_numbers_is_applied_without_them(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.add("203.0.113.7")
    src = StreamSource(LapiClient(url, "test-key", 2.0), 10.0)
    assert src.pull_once()
    lapi.fault = Fault(body=stream_body(*bad_decisions(), decision(50, "203.0.113.50")),
                       count=1)
    assert src.pull_once()
    assert ask(src, "203.0.113.50") == [50] and ask(src, "198.51.100.2") == []
    assert src.stats().bad_decisions == 4


@pytest.mark.parametrize("startup", [True, False], ids=["startup", "delta"])
def test_nesting_too_deep_is_a_lapi_error_and_keeps_the_last_good_state(
        fake_lapi: tuple[FakeLapi, str], caplog: pytest.LogCaptureFixture,
        startup: bool) -> None:
    lapi, url = fake_lapi
    ban = lapi.add("203.0.113.7")
    src = StreamSource(LapiClient(url, "test-key", 2.0), 10.0)
    if not startup:
        assert src.pull_once()
    lapi.fault = Fault(body=NESTED, count=1)
    with caplog.at_level(logging.INFO):
        assert not src.pull_once()
    assert src.stats().errors == {"decode": 1}
    assert "Traceback" not in caplog.text and "nested" in caplog.text
    assert ask(src, "203.0.113.7") == ([ban] if not startup else None)
    assert src.pull_once() and ask(src, "203.0.113.7") == [ban]  # resync on the next


def test_live_skips_huge_numbers_and_takes_deep_nesting_as_an_error(
        fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    src = LiveSource(LapiClient(url, "test-key", 2.0), 60.0, timeout=2.0)
    lapi.fault = Fault(body=array(*bad_decisions(), decision(60, "198.51.100.60")), count=1)
    assert ask(src, "198.51.100.60") == [60]
    assert src.stats().bad_decisions == 4
    lapi.fault = Fault(body=b"[" * 100_000 + b"]" * 100_000, count=1)
    assert ask(src, "198.51.100.61") is None  # --on-lapi-error then says
    assert src.stats().errors == {"decode": 1}
    assert ask(src, "198.51.100.61") == []


def run_tool(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args, "--lapi-url", url, "--api-key", "test-key",
                           "--mode", "live"], capture_output=True, text=True, timeout=60)


def test_tools_give_a_clear_error_on_a_malformed_answer(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    # check counts the decisions: the huge ones are counted as unusable
    lapi.fault = Fault(body=array(*bad_decisions(), decision(5, "203.0.113.5")))
    out = run_tool("check", url=url)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "active decisions: 1 (ban Ip: 1); 4 unusable (skipped)" in out.stdout
    out = run_tool("lookup", "203.0.113.5", url=url)
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr
    assert "decision id=5 " in out.stdout
    # too deep: a LAPI error, said in one line
    lapi.fault = Fault(body=b"[" * 100_000 + b"]" * 100_000)
    out = run_tool("check", url=url)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "could not be counted (decode)" in out.stdout and "nested" in out.stdout
    out = run_tool("lookup", "203.0.113.5", url=url)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "LAPI could not answer" in out.stdout


def test_the_test_bodies_are_what_they_claim() -> None:
    """The huge values really are over the limit, the nesting really too deep."""
    with pytest.raises(ValueError, match="4300"):
        json.loads(decision(HUGE, "192.0.2.1"))
    with pytest.raises(RecursionError):
        json.loads(NESTED)


def test_the_running_milter_syncs_past_them_without_a_traceback(
        tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> None:
    """The real program: its first pull holds huge numbers, a later one is nested too
    deep; it syncs, keeps the ban through the failed pull and logs no traceback."""
    lapi, url = fake_lapi
    lapi.startup_body = stream_body(decision(7, "203.0.113.7"), *bad_decisions())
    proc = MilterProcess(tmp_path, url, "test-key", "--update-frequency", "0.2").start()
    try:
        assert verdict(proc, "203.0.113.7") == "reject"
        assert "skipped 4 unusable decision(s)" in proc.log()
        lapi.fault = Fault(body=NESTED, count=1, only="startup=false")
        assert eventually(lambda: "stream pull failed (decode)" in proc.log()), proc.log()
        assert eventually(lambda: proc.log().count("stream resync: 1 decision(s) held") >= 2)
        assert verdict(proc, "203.0.113.7") == "reject"
        assert "Traceback" not in proc.log() and "nested too deep" in proc.log()
    finally:
        proc.stop()
