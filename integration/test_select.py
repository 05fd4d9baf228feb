"""Choosing decisions and grading answers, end to end: real CrowdSec 1.4.6 decisions (cscli
add and import), the real milter program in stream and live mode, a real Postfix; the tag
header read from a mailbox Postfix's local(8) delivered to."""

from __future__ import annotations

import email.utils
import itertools
import json
import mailbox
import os
import pwd
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventschema import read_events
from milter_process import EXE
from mmdb import write as write_mmdb
from nodes import Node
from real_crowdsec import CrowdSec
from real_postfix import blocked, delivered
from waiting import eventually

pytestmark = pytest.mark.integration
_n = itertools.count(1)
_subjects = itertools.count(1)


def fresh_ip() -> str:
    """A client address no other test of this module uses (they share one LAPI)."""
    return f"198.18.{next(_n)}.7"


@pytest.fixture(scope="module")
def mail_user() -> Iterator[str]:
    """A system user of this test run whose mail Postfix delivers to a mailbox file."""
    name = f"csmt{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)


def import_decision(cs: CrowdSec, tmp: Path, ip: str, reason: str = "imported-list") -> None:
    """A decision whose origin is cscli-import (what `cscli decisions import` gives)."""
    path = tmp / f"import-{ip}.json"
    path.write_text(json.dumps([{"duration": "1h", "scope": "ip", "type": "ban",
                                 "value": ip, "reason": reason}]))
    cs.cscli("decisions", "import", "-i", str(path))


def decision_id(cs: CrowdSec, ip: str, scenario: str) -> int:
    """LAPI's id of a decision, from `cscli alerts list` (`cscli decisions list` shows one
    decision per address)."""
    return next(d["id"] for a in cs.alerts() for d in a.get("decisions") or []
                if d["value"] == ip and d["scenario"] == scenario)


def mode_node(workdir: Path, cs: CrowdSec, name: str, mode: str, *args: str,
              deliver_to: str | None = None) -> Node:
    """A node in `mode` that pulls or re-asks every half second."""
    return Node(workdir, cs, name, "--mode", mode, "--update-frequency", "0.5",
                "--cache-ttl", "1", *args, deliver_to=deliver_to)


@pytest.fixture(scope="module", params=["stream", "live"])
def selecting(request: pytest.FixtureRequest, lapi: CrowdSec,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """Only cscli's own decisions, and none whose scenario mentions web-scan."""
    mode = request.param
    n = mode_node(tmp_path_factory.mktemp(f"select-{mode}"), lapi, f"select-{mode}", mode,
             "--origins", "cscli", "--scenarios-not-containing", "WEB-SCAN")
    yield n
    n.stop()


def test_a_longer_unselected_decision_never_hides_a_shorter_selected_one(
        selecting: Node, lapi: CrowdSec) -> None:
    """LAPI's default dedup sends only the longest decision per (value, type, scope): the
    4h web-scan ban alone would reach a stream bouncer, and filtering it out would let the
    client through despite the 1h ban it selects."""
    ip, control = fresh_ip(), fresh_ip()
    lapi.add_decision(ip=ip, duration="4h", reason="web-scan")
    lapi.add_decision(ip=control, duration="4h", reason="web-scan")
    lapi.add_decision(ip=ip, duration="1h", reason="manual ban")
    assert eventually(lambda: blocked(selecting.send(ip))), selecting.send(ip).text()
    assert delivered(selecting.send(control))  # its only decision is not selected


def test_origins_select(selecting: Node, lapi: CrowdSec, tmp_path: Path) -> None:
    imported, control = fresh_ip(), fresh_ip()
    import_decision(lapi, tmp_path, imported)
    lapi.add_decision(ip=control)
    assert eventually(lambda: blocked(selecting.send(control)))  # pulled (stream) or asked
    assert delivered(selecting.send(imported))  # origin cscli-import is not in --origins


@pytest.fixture(scope="module", params=["stream", "live"])
def grading(request: pytest.FixtureRequest, lapi: CrowdSec, mail_user: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """Imported lists tempfail, web-scan scenarios tag, other bans reject; mail delivered."""
    mode = request.param
    n = mode_node(tmp_path_factory.mktemp(f"grade-{mode}"), lapi, f"grade-{mode}", mode,
             "--action", "origin:cscli-import=tempfail", "--action", "scenario:*Web-Scan*=tag",
             deliver_to=mail_user)
    yield n
    n.stop()


def mailbox_message(node: Node, ip: str) -> mailbox.mboxMessage:
    """Send one message from `ip`; the copy local(8) delivered."""
    subject = f"probe {next(_subjects)} from {ip}"
    t = node.send(ip, subject=subject)
    assert delivered(t), t.text()

    def find() -> mailbox.mboxMessage | None:
        try:
            box = mailbox.mbox(str(node.postfix.mail_dir / node.rcpt.split("@")[0]),
                               create=False)
        except mailbox.NoSuchMailboxError:  # nothing delivered yet
            return None
        try:
            return next((m for m in box if m["Subject"] == subject), None)
        finally:
            box.close()

    assert eventually(lambda: find() is not None), node.postfix.log_text()[-2000:]
    found = find()
    assert found is not None
    return found


def test_tagged_client_gets_the_header_and_a_clean_one_does_not(
        grading: Node, lapi: CrowdSec) -> None:
    ip, clean = fresh_ip(), fresh_ip()
    lapi.add_decision(ip=ip, duration="2h", reason="crowdsecurity/web-scan")
    header = (f"ban; origin=cscli; scenario=crowdsecurity/web-scan; scope=Ip; value={ip}")
    assert eventually(lambda: mailbox_message(grading, ip)["X-CrowdSec-Decision"] == header)
    message = mailbox_message(grading, ip)
    assert message.get_all("X-CrowdSec-Decision") == [header]  # one header, every message
    assert mailbox_message(grading, clean)["X-CrowdSec-Decision"] is None
    ident = decision_id(lapi, ip, "crowdsecurity/web-scan")

    def blocked_events() -> list[dict]:
        return [e for e in read_events(grading.milter.events)
                if e["event"] == "client_blocked" and e["client_ip"] == ip]

    assert eventually(lambda: len(blocked_events()) >= 2)  # one a session, two tagged at least
    events = blocked_events()
    assert {(e["action"], e["enforced"], e["decision_id"]) for e in events} == {
        ("tag", True, ident)}
    assert events[-1]["decision_until"].endswith("Z")
    line = next(x for x in grading.milter.log().splitlines() if f"client={ip} " in x)
    assert line.split(": ", 1)[1].startswith("tag client=")
    assert f"id={ident} " in line and " until=20" in line and "key=scenario:*web-scan*" in line


def test_a_hostile_scenario_cannot_add_fields_to_the_tag_header(
        grading: Node, lapi: CrowdSec) -> None:
    """A scenario is whatever LAPI was given: separators inside it stay inside its value,
    so the header parses back to the decision's own fields (issue 21, defect 14)."""
    ip = fresh_ip()
    scenario = 'crowdsecurity/web-scan; origin=crowdsec; scope=Range; value="0.0.0.0/0'
    lapi.add_decision(ip=ip, duration="2h", reason=scenario)
    assert eventually(lambda: mailbox_message(grading, ip)["X-CrowdSec-Decision"] is not None)
    message = mailbox_message(grading, ip)
    params = message.get_params(header="X-CrowdSec-Decision")
    assert params is not None, message["X-CrowdSec-Decision"]
    fields = [(k, email.utils.collapse_rfc2231_value(v)) for k, v in params]
    assert fields == [("ban", ""), ("origin", "cscli"), ("scenario", scenario),
                      ("scope", "Ip"), ("value", ip)], message["X-CrowdSec-Decision"]


def test_most_specific_key_per_decision_most_severe_per_client(
        grading: Node, lapi: CrowdSec, tmp_path: Path) -> None:
    imported, both = fresh_ip(), fresh_ip()
    import_decision(lapi, tmp_path, imported, reason="crowdsecurity/web-scan")
    # the scenario key beats the origin key: tag, so the message goes through tagged
    assert eventually(lambda: mailbox_message(grading, imported)["X-CrowdSec-Decision"] is not None)
    lapi.add_decision(ip=both, duration="3h", reason="crowdsecurity/web-scan")  # tag
    lapi.add_decision(ip=both, duration="1h", reason="manual")  # ban: reject
    assert eventually(lambda: blocked(grading.send(both))), grading.send(both).text()
    plain = fresh_ip()
    import_decision(lapi, tmp_path, plain)  # origin cscli-import, no key for its scenario
    assert eventually(lambda: grading.send(plain).code("MAIL") == 451)
    assert "temporarily blocked by CrowdSec" in grading.send(plain).text()


def test_lookup_says_which_decision_is_selected_and_which_key_applies(
        lapi: CrowdSec, tmp_path: Path) -> None:
    ip = fresh_ip()
    lapi.add_decision(ip=ip, duration="4h", reason="web-scan")
    lapi.add_decision(ip=ip, duration="1h", reason="crowdsecurity/http-probing")
    keyfile = tmp_path / "key"
    keyfile.write_text(lapi.add_bouncer(f"select-tools-{next(_n)}") + "\n")
    keyfile.chmod(0o600)
    base = [EXE, "lookup", ip, "--mode", "live", "--lapi-url", lapi.lapi_url,
            "--api-key-file", str(keyfile), "--scenarios-not-containing", "web-scan",
            "--action", "scenario:*http*=tag"]
    out = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    web = decision_id(lapi, ip, "web-scan")
    http = decision_id(lapi, ip, "crowdsecurity/http-probing")
    assert f"decision id={web} " in text and f"decision id={http} " in text
    after = {line.split()[1]: nxt for line, nxt in zip(text.splitlines(),
                                                       text.splitlines()[1:], strict=False)
             if line.startswith("decision ")}
    assert after[f"id={web}"].strip() == "not selected (dropped by --scenarios-not-containing)"
    assert after[f"id={http}"].strip() == "selected; --action key scenario:*http*: tag"
    assert "milter answer: tag: let through" in text
    assert "X-CrowdSec-Decision: ban; origin=cscli; scenario=crowdsecurity/http-probing" in text
    # without the tag key the same decision rejects (exit 3)
    out = subprocess.run(base[:-2], capture_output=True, text=True, timeout=30)
    assert out.returncode == 3 and "selected; --action key ban: reject" in out.stdout
    check = subprocess.run([EXE, "check", *base[3:]], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "dropped by --scenarios-not-containing: " in check.stdout
    assert "selected: " in check.stdout


@pytest.fixture(scope="module", params=["stream", "live"])
def geo_node(request: pytest.FixtureRequest, lapi: CrowdSec,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """With the tests' own MaxMind databases: 198.51.100.0/24 is FR and AS64500,
    192.0.2.0/24 is DE and AS64501."""
    mode = request.param
    work = tmp_path_factory.mktemp(f"geo-{mode}")
    country, asn = write_mmdb(work)
    n = mode_node(work, lapi, f"geo-{mode}", mode, "--geoip-country-db", str(country),
             "--geoip-asn-db", str(asn))
    yield n
    n.stop()


def test_country_and_as_decisions_through_postfix(geo_node: Node, lapi: CrowdSec) -> None:
    french, german = "198.51.100.7", "192.0.2.44"
    assert delivered(geo_node.send(french)) and delivered(geo_node.send(german))
    lapi.cscli("decisions", "add", "--scope", "Country", "--value", "FR", "--duration", "1h",
               "--reason", "geo-test")
    try:
        assert eventually(lambda: blocked(geo_node.send(french))), geo_node.send(french).text()
        assert delivered(geo_node.send(german))
        lapi.cscli("decisions", "add", "--scope", "AS", "--value", "64501", "--type",
                   "captcha", "--duration", "1h", "--reason", "geo-test-as")
        assert eventually(lambda: geo_node.send(german).code("MAIL") == 451)

        def seen() -> set[tuple[str, str, str]]:
            return {(e["client_ip"], e["decision_scope"], e["decision_value"])
                    for e in read_events(geo_node.milter.events)
                    if e["event"] == "client_blocked"}

        assert eventually(lambda: seen() >= {(french, "Country", "FR"),
                                             (german, "AS", "64501")}), seen()
        assert f"client={french} type=ban scope=Country value=FR" in geo_node.milter.log()
    finally:  # the other mode's node starts from a clean LAPI
        lapi.cscli("decisions", "delete", "--scenario", "geo-test")
        lapi.cscli("decisions", "delete", "--scenario", "geo-test-as")
    assert eventually(lambda: delivered(geo_node.send(french)))  # deleted: let through again


def test_without_a_database_country_decisions_are_skipped_and_said(
        selecting: Node, lapi: CrowdSec, tmp_path: Path) -> None:
    lapi.cscli("decisions", "add", "--scope", "Country", "--value", "NL", "--duration", "1h",
               "--reason", "geo-skip")
    lapi.add_decision(ip="198.18.250.7")  # control: pulled (stream) or asked (live)
    assert eventually(lambda: blocked(selecting.send("198.18.250.7")))
    keyfile = tmp_path / "key"
    keyfile.write_text(lapi.add_bouncer(f"select-geo-tools-{next(_n)}") + "\n")
    keyfile.chmod(0o600)
    args = ["--mode", "live", "--lapi-url", lapi.lapi_url, "--api-key-file", str(keyfile)]
    check = subprocess.run([EXE, "check", *args], capture_output=True, text=True, timeout=30)
    assert re.search(r"; \d+ Country \(not used: no --geoip-country-db\)", check.stdout), \
        check.stdout
    out = subprocess.run([EXE, "lookup", "198.51.100.7", *args], capture_output=True,
                         text=True, timeout=30)
    assert "Country decisions not checked: no --geoip-country-db" in out.stdout, out.stdout
    country, asn = write_mmdb(tmp_path)
    out = subprocess.run([EXE, "lookup", "198.51.100.7", *args, "--geoip-country-db",
                          str(country), "--geoip-asn-db", str(asn)],
                         capture_output=True, text=True, timeout=30)
    assert "country FR (--geoip-country-db); AS 64500 (--geoip-asn-db)" in out.stdout, out.stdout


def test_tag_without_the_event_log(lapi: CrowdSec, mail_user: str, tmp_path: Path) -> None:
    """With no event log the milter asks Postfix for neither DATA nor the content phase and
    ACCEPTs clean clients at connect; a tagged client's message still gets its header at
    end of message."""
    node = mode_node(tmp_path, lapi, f"tag-quiet-{next(_n)}", "stream", "--event-log", "none",
                "--action", "scenario:*web-scan*=tag", deliver_to=mail_user)
    try:
        ip, clean = fresh_ip(), fresh_ip()
        lapi.add_decision(ip=ip, duration="2h", reason="web-scan")
        assert eventually(lambda: mailbox_message(node, ip)["X-CrowdSec-Decision"] is not None)
        assert mailbox_message(node, ip).get_all("X-CrowdSec-Decision") == [
            f"ban; origin=cscli; scenario=web-scan; scope=Ip; value={ip}"]
        assert mailbox_message(node, clean)["X-CrowdSec-Decision"] is None
    finally:
        node.stop()
