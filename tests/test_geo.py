"""Country and AS decisions: MaxMind databases the tests write themselves, decisions from
the tests' LAPI server in stream and live mode, the policy's verdict."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from crowdsec_milter.decisions import parse_address
from crowdsec_milter.geo import Geo, GeoError
from crowdsec_milter.lapi import LapiClient
from crowdsec_milter.policy import Action
from crowdsec_milter.source import LiveSource, StreamSource
from helpers import make
from lapi_server import FakeLapi
from milter_process import EXE
from mmdb import write


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write(tmp_path_factory.mktemp("mmdb"))


def lookup(source: StreamSource | LiveSource, ip: str) -> list[tuple[str, str]] | None:
    family, number, text = parse_address(ip)  # type: ignore[misc]
    found = source.lookup(family, number, text)
    return None if found is None else [(d.scope, d.value) for d in found]


def test_databases_give_country_and_as(dbs: tuple[Path, Path]) -> None:
    geo = Geo(str(dbs[0]), str(dbs[1]))
    assert geo.scopes == ("country", "as")
    assert geo.locate("198.51.100.7") == ("FR", "64500")
    assert geo.locate("2001:db8:f::1") == ("FR", "64500")
    assert geo.locate("203.0.113.1") == ("", "")
    assert Geo(None, str(dbs[1])).locate("192.0.2.1") == ("", "64501")
    with pytest.raises(GeoError, match="--geoip-country-db"):
        Geo(str(dbs[0].parent / "missing.mmdb"), None)


def test_stream_asks_for_the_scopes_it_can_match(fake_lapi: tuple[FakeLapi, str],
                                                 dbs: tuple[Path, Path]) -> None:
    lapi, url = fake_lapi
    country = lapi.add("FR", scope="Country")
    lapi.add("64501", scope="AS")
    src = StreamSource(LapiClient(url, "test-key", 2.0), 10.0, geo=Geo(str(dbs[0]), str(dbs[1])))
    assert src.pull_once()
    assert lapi.requests[-1][1]["scopes"] == ["ip,range,country,as"]
    assert lookup(src, "198.51.100.7") == [("Country", "FR")]
    assert lookup(src, "192.0.2.1") == [("AS", "64501")]
    assert lookup(src, "203.0.113.1") == []
    lapi.add("AS64500", scope="AS")  # a delta; the value written either way
    assert src.pull_once()
    assert sorted(lookup(src, "2001:db8:f::9")) == [("AS", "64500"), ("Country", "FR")]
    lapi.delete(country)
    assert src.pull_once()
    assert lookup(src, "198.51.100.7") == [("AS", "64500")]
    plain = StreamSource(LapiClient(url, "test-key", 2.0), 10.0)
    assert plain.pull_once()
    assert "scopes" not in lapi.requests[-1][1]  # LAPI's default: ip,range
    assert lookup(plain, "198.51.100.7") == []


def test_live_asks_per_country_and_as_and_caches(fake_lapi: tuple[FakeLapi, str],
                                                 dbs: tuple[Path, Path]) -> None:
    lapi, url = fake_lapi
    lapi.add("FR", scope="Country", type_="captcha")
    lapi.add("198.51.100.7")
    src = LiveSource(LapiClient(url, "test-key", 2.0), 60.0, timeout=2.0,
                     geo=Geo(str(dbs[0]), str(dbs[1])))
    assert lookup(src, "198.51.100.7") == [("Ip", "198.51.100.7"), ("Country", "FR")]
    asked = [q for p, q, _ in lapi.requests if p == "/v1/decisions"]
    assert {"scopes": ["Country"], "value": ["FR"]} in asked
    assert {"scopes": ["AS"], "value": ["64500"]} in asked
    assert lookup(src, "198.51.100.8") == [("Country", "FR")]  # FR's answer from the cache
    assert len([q for p, q, _ in lapi.requests if p == "/v1/decisions"]) == len(asked) + 1


def test_country_decision_gets_its_action(fake_lapi: tuple[FakeLapi, str],
                                          dbs: tuple[Path, Path]) -> None:
    lapi, url = fake_lapi
    lapi.add("64500", scope="AS", scenario="bad-hoster")
    src = StreamSource(LapiClient(url, "test-key", 2.0), 10.0, geo=Geo(None, str(dbs[1])))
    assert src.pull_once()
    policy = make(src, actions=(("ban", Action.REJECT), ("scenario:bad-*", Action.TEMPFAIL)))
    verdict = policy.check("198.51.100.20")
    assert verdict is not None and verdict.action is Action.TEMPFAIL
    assert verdict.decision is not None and verdict.decision.scope == "AS"
    assert policy.check("192.0.2.1") is None


def test_a_file_that_is_no_database_stops_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"not a database")
    key = tmp_path / "key"
    key.write_text("k\n")
    key.chmod(0o600)
    out = subprocess.run([EXE, "--api-key-file", str(key), "--geoip-asn-db", str(bad)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "--geoip-asn-db" in out.stderr and "Traceback" not in out.stderr


def test_databases_are_read_only_while_such_decisions_are_held(
        fake_lapi: tuple[FakeLapi, str], dbs: tuple[Path, Path]) -> None:
    lapi, url = fake_lapi
    geo = Geo(str(dbs[0]), str(dbs[1]))
    src = StreamSource(LapiClient(url, "test-key", 2.0), 10.0, geo=geo)
    assert src.pull_once()
    assert lookup(src, "198.51.100.7") == []
    assert geo.cache_info().misses == 0  # no Country/AS decision: no lookup
    ident = lapi.add("FR", scope="Country")
    assert src.pull_once() and lookup(src, "198.51.100.7") == [("Country", "FR")]
    lapi.delete(ident)
    assert src.pull_once() and src.scoped_count == 0


def test_country_and_as_decisions_count_as_active(fake_lapi: tuple[FakeLapi, str],
                                                  dbs: tuple[Path, Path]) -> None:
    """What usage metrics report as active_decisions includes them."""
    lapi, url = fake_lapi
    lapi.add("203.0.113.9")
    lapi.add("FR", scope="Country")
    src = StreamSource(LapiClient(url, "test-key", 2.0), 10.0, geo=Geo(str(dbs[0]), None))
    assert src.pull_once() and src.stats().active == 2
