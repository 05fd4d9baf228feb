"""GeoIP databases changed under a running milter (issue 21, defects 2, 3 and 11): the real
crowdsec-milter program, the tests' own MaxMind DB files (tests/mmdb.py) and LAPI server.

A database truncated, overwritten in place or replaced must never kill the process nor
cost an Ip/Range verdict; a file replaced by a complete one is picked up without restart;
a database of the wrong kind is refused; in live mode a failed Country query keeps the Ip
ban already fetched."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from crowdsec_milter.geo import Geo, GeoError
from crowdsec_milter.lapi import LapiClient
from crowdsec_milter.policy import Action
from crowdsec_milter.source import LiveSource
from helpers import make
from lapi_server import FakeLapi, Fault
from milter_process import EXE, MilterProcess, verdict
from mmdb import corrupt_data, write
from waiting import eventually

_fresh = (f"198.51.100.{i}" for i in itertools.count(1))  # FR in mmdb.NETWORKS


@pytest.fixture
def milter(tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> Iterator[tuple[MilterProcess,
                                                                              Path]]:
    """A stream-mode milter enforcing a Country FR ban and an Ip ban on 203.0.113.7 (in
    no database network), with --on-lapi-error tempfail: a client whose country cannot
    be read gets 451, an Ip-banned one must still get 550."""
    lapi, url = fake_lapi
    lapi.add("FR", scope="Country")
    lapi.add("203.0.113.7")
    country, _ = write(tmp_path)
    proc = MilterProcess(tmp_path, url, "test-key", "--geoip-country-db", str(country),
                         "--on-lapi-error", "tempfail").start()
    yield proc, country
    proc.stop()


def loaded(proc: MilterProcess, times: int = 1) -> bool:
    """Whether the milter says it loaded a changed file `times` times. Lookups are what
    make it look at the file, so one is made first."""
    verdict(proc, next(_fresh))
    return proc.log().count("changed file loaded") >= times


def alive(proc: MilterProcess) -> bool:
    return proc.proc is not None and proc.proc.poll() is None


def test_truncated_then_rewritten_then_replaced_database(milter) -> None:
    proc, country = milter
    assert verdict(proc, next(_fresh)) == "reject"
    os.truncate(country, 0)  # what cp, curl -o and gunzip > do first
    assert verdict(proc, next(_fresh)) == "reject", proc.log()  # was SIGBUS (exit -7)
    assert verdict(proc, "203.0.113.7") == "reject" and alive(proc)
    assert eventually(lambda: verdict(proc, next(_fresh)) == "reject"
                      and "keeping the database loaded before" in proc.log()), proc.log()
    # then written in place, complete: FR moves to 192.0.2.0/24
    (country.parent / "new").mkdir()
    new, _ = write(country.parent / "new",
                   {"198.51.100.0/24": ("DE", 1), "192.0.2.0/24": ("FR", 2)})
    country.write_bytes(new.read_bytes())
    assert eventually(lambda: loaded(proc)), proc.log()
    assert verdict(proc, next(_fresh)) == "continue"
    assert verdict(proc, "192.0.2.4") == "reject"
    # and replaced atomically (mv), the documented way
    (country.parent / "newer").mkdir()
    newer, _ = write(country.parent / "newer", {"203.0.113.0/24": ("FR", 3)})
    os.replace(newer, country)
    assert eventually(lambda: loaded(proc, 2)), proc.log()
    assert verdict(proc, "192.0.2.5") == "continue"
    assert verdict(proc, "203.0.113.5") == "reject" and alive(proc)


def test_database_overwritten_in_place_never_costs_an_ip_verdict(milter) -> None:
    proc, country = milter
    corrupt_data(country)  # same size, metadata intact: it still opens
    assert verdict(proc, "203.0.113.7") == "reject", proc.log()  # was tempfail/continue
    assert verdict(proc, next(_fresh)) == "reject"  # the copy loaded before answers
    # once still for a second the file is loaded (it passes every open check), and the
    # lookups it cannot answer leave the country unknown: --on-lapi-error for that part
    assert eventually(lambda: loaded(proc)), proc.log()
    assert verdict(proc, "203.0.113.7") == "reject"
    assert verdict(proc, next(_fresh)) == "tempfail"
    assert "GeoIP lookup failed" in proc.log() and "Traceback" not in proc.log()
    assert alive(proc)


def test_a_database_of_the_wrong_kind_stops_start_up(tmp_path: Path, keyfile: Path) -> None:
    country, asn = write(tmp_path)
    for option, path, kind in (("--geoip-country-db", asn, "GeoLite2-ASN"),
                               ("--geoip-asn-db", country, "GeoLite2-Country")):
        out = subprocess.run([EXE, "--api-key-file", str(keyfile), option, str(path)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert option in out.stderr and kind in out.stderr and "Traceback" not in out.stderr


def test_a_replacement_of_the_wrong_kind_is_refused_and_the_old_kept(tmp_path: Path) -> None:
    country, asn = write(tmp_path)
    clock = [0.0]
    geo = Geo(str(country), None, clock=lambda: clock[0], wall=lambda: 1e12)
    assert geo.locate("198.51.100.1") == ("FR", "")
    os.replace(asn, country)
    clock[0] += 5.0
    assert geo.locate("198.51.100.2") == ("FR", "")  # the ASN file was not taken
    with pytest.raises(GeoError, match=r"--geoip-country-db .*GeoLite2-ASN"):
        Geo(str(country), None)


def test_live_keeps_an_ip_ban_when_the_country_query_fails(
        fake_lapi: tuple[FakeLapi, str], tmp_path: Path) -> None:
    lapi, url = fake_lapi
    country, asn = write(tmp_path)
    lapi.add("198.51.100.7")  # an Ip ban on a French address
    lapi.add("198.51.100.9", type_="captcha")
    lapi.fault = Fault(status=500, only="scopes=Country")  # LAPI fails that query only
    src = LiveSource(LapiClient(url, "test-key", 2.0), 60.0, timeout=2.0,
                     geo=Geo(str(country), str(asn)))
    found = make(src, on_lapi_error=Action.ACCEPT).check("198.51.100.7")
    assert found is not None and found.action is Action.REJECT  # was None: let through
    assert found.decision is not None and found.decision.scope == "Ip"
    # nothing known on the address: the unknown country gets --on-lapi-error
    assert make(src, on_lapi_error=Action.ACCEPT).check("198.51.100.8") is None
    unknown = make(src, on_lapi_error=Action.TEMPFAIL).check("198.51.100.8")
    assert unknown is not None and unknown.reason == "lapi_unavailable"
    # what is known is milder than --on-lapi-error: the more severe answer wins
    tagged = make(src, on_lapi_error=Action.TEMPFAIL,
                  actions=(("ban", Action.REJECT), ("captcha", Action.TAG)))
    assert tagged.check("198.51.100.9").action is Action.TEMPFAIL  # type: ignore[union-attr]
    lapi.fault = None
    assert tagged.check("198.51.100.9").action is Action.TAG  # type: ignore[union-attr]
