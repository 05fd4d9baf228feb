"""Range decisions too wide to enforce (issue 21, defect 12): one `0.0.0.0/0` or `::/0`
blocked every client, silently. Wider than --widest-range (default /8 for IPv4, /16 for
IPv6), a decision is set aside: never enforced, logged once with its id and origin,
counted in the metrics, shown by `check` and `lookup`. Against the tests' own LAPI server;
integration/test_wide_ranges.py does it with real CrowdSec and Postfix."""

from __future__ import annotations

import logging
import subprocess

import pytest
from crowdsec_milter.decisions import parse_address, parse_network, too_wide
from crowdsec_milter.lapi import LapiClient
from crowdsec_milter.metrics import MilterCollector
from crowdsec_milter.source import LiveSource, StreamSource
from crowdsec_milter.tally import Tally
from helpers import make
from lapi_server import FakeLapi
from milter_process import EXE, metric
from prometheus_client import CollectorRegistry, generate_latest


@pytest.mark.parametrize(("value", "wide"), [
    ("0.0.0.0/0", True), ("1.0.0.0/7", True), ("10.0.0.0/8", False), ("10.9.0.0/16", False),
    ("::/0", True), ("2000::/3", True), ("2001::/15", True), ("2001::/16", False),
    ("2001:db8::/32", False), ("::ffff:0.0.0.0/96", True),  # mapped: IPv4 0.0.0.0/0
])
def test_too_wide_by_the_default_bound(value: str, wide: bool) -> None:
    assert too_wide(parse_network("range", value)) is wide


def test_the_bound_is_the_operators() -> None:
    assert not too_wide(parse_network("range", "0.0.0.0/0"), (0, 0))
    assert too_wide(parse_network("range", "10.0.0.0/8"), (9, 16))
    assert not too_wide(parse_network("ip", "192.0.2.1"), (32, 128))


def check(src: StreamSource | LiveSource, ip: str) -> str:
    verdict = make(src).check(ip)
    return "pass" if verdict is None else str(verdict.action)


def too_wide_metric(src: StreamSource | LiveSource) -> float:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MilterCollector(Tally(), src, None))  # type: ignore[arg-type]
    return metric(generate_latest(registry).decode(), "crowdsec_milter_decisions_too_wide")


def logged(caplog: pytest.LogCaptureFixture, ident: int) -> int:
    return sum(f"not enforcing decision id={ident} " in r.getMessage() for r in caplog.records)


def test_stream_sets_aside_too_wide_ranges_and_enforces_the_rest(
        fake_lapi: tuple[FakeLapi, str], caplog: pytest.LogCaptureFixture) -> None:
    lapi, url = fake_lapi
    all4 = lapi.add("0.0.0.0/0", scope="Range", origin="cscli")
    all6 = lapi.add("::/0", scope="Range", origin="CAPI")
    lapi.add("10.0.0.0/8", scope="Range")
    lapi.add("203.0.113.7")
    src = StreamSource(LapiClient(url, "test-key", 2.0), 10.0, resync_interval=0.5)
    with caplog.at_level(logging.WARNING):
        assert src.pull_once()
        assert check(src, "203.0.113.1") == "pass"  # was reject: every client blocked
        assert check(src, "2001:db8::1") == "pass"
        assert check(src, "10.1.2.3") == "reject" and check(src, "203.0.113.7") == "reject"
        assert too_wide_metric(src) == 2
        assert sorted(d.id for d in src.too_wide()) == [all4, all6]
        lapi.add("192.0.2.0/4", scope="Range")  # a delta brings one more
        assert src.pull_once() and too_wide_metric(src) == 3
        src._last_startup -= 10  # a full resync next
        assert src.pull_once() and lapi.requests[-1][1]["startup"] == ["true"]
    assert check(src, "192.0.2.1") == "pass" and too_wide_metric(src) == 3
    # each logged once, with id and origin, whatever the pulls
    assert logged(caplog, all4) == 1 and logged(caplog, all6) == 1
    line = next(r.getMessage() for r in caplog.records if f"id={all4} " in r.getMessage())
    assert "origin=cscli" in line and "value=0.0.0.0/0" in line and "--widest-range 8,16" in line
    lapi.delete(all4)
    assert src.pull_once() and too_wide_metric(src) == 2
    # the operator may raise the bound
    everything = StreamSource(LapiClient(url, "test-key", 2.0), 10.0, widest=(0, 0))
    assert everything.pull_once() and check(everything, "2001:db8::1") == "reject"


def test_live_sets_aside_too_wide_ranges(fake_lapi: tuple[FakeLapi, str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    lapi, url = fake_lapi
    all4 = lapi.add("0.0.0.0/0", scope="Range")
    lapi.add("203.0.113.7")
    src = LiveSource(LapiClient(url, "test-key", 2.0), 60.0, timeout=2.0)
    with caplog.at_level(logging.WARNING):
        assert check(src, "203.0.113.1") == "pass"
        assert check(src, "198.51.100.1") == "pass"
        assert check(src, "203.0.113.7") == "reject"
    assert logged(caplog, all4) == 1 and too_wide_metric(src) == 1
    family, number, text = parse_address("192.0.2.1")  # type: ignore[misc]
    assert src.lookup(family, number, text) == []


def run_tool(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args, "--lapi-url", url, "--api-key", "test-key",
                           "--mode", "live"], capture_output=True, text=True, timeout=60)


def test_check_and_lookup_show_them(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    ident = lapi.add("0.0.0.0/0", scope="Range")
    lapi.add("::/1", scope="Range")
    lapi.add("203.0.113.0/24", scope="Range")
    out = run_tool("check", url=url)
    assert out.returncode == 0, out.stderr
    assert ("active decisions: 1 (ban Range: 1); 2 too wide (not enforced: wider than "
            "--widest-range 8,16)") in out.stdout
    out = run_tool("lookup", "198.51.100.1", url=url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"decision id={ident} type=ban scope=Range value=0.0.0.0/0" in out.stdout
    assert "not enforced: wider than --widest-range 8,16" in out.stdout
    assert "milter answer: let through" in out.stdout
    out = run_tool("lookup", "198.51.100.1", "--widest-range", "0,0", url=url)
    assert out.returncode == 3 and "not enforced" not in out.stdout


@pytest.mark.parametrize("bad", ["8", "33,16", "8,129", "a,b", "8,16,24", ""])
def test_a_bad_bound_stops_start_up_naming_the_option(bad: str, keyfile) -> None:
    out = subprocess.run([EXE, "config", "--api-key-file", str(keyfile),
                          "--widest-range", bad], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "--widest-range" in out.stderr


def test_config_shows_the_bound_from_each_source(keyfile, tmp_path) -> None:
    base = [EXE, "config", "--api-key-file", str(keyfile)]
    out = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert "widest-range = 8,16 (default)" in out.stdout
    conf = tmp_path / "c.conf"
    conf.write_text("widest-range = 4,12\n")
    out = subprocess.run([*base, "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert f"widest-range = 4,12 (file {conf})" in out.stdout
    out = subprocess.run(base, capture_output=True, text=True, timeout=30,
                         env={"CROWDSEC_MILTER_WIDEST_RANGE": "0,0", "PATH": "/usr/bin"})
    assert "widest-range = 0,0 (env CROWDSEC_MILTER_WIDEST_RANGE)" in out.stdout
