"""https LAPI: the CA checked, and a bouncer authenticated by client certificate instead of
an API key, against a real CrowdSec configured for TLS with certificates made here."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from certs import has_key_usage, make_ca, make_cert
from milter_process import MilterProcess, Mta
from real_crowdsec import CrowdSec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_lapi(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("tls")
    ca = make_ca(d / "pki")
    server = make_cert(d / "pki", "lapi", ca, server=True)
    bouncer = make_cert(d / "pki", "milter", ca, ou="bouncer-ou")
    other_ca = make_ca(d / "pki", "other-ca")
    cs = CrowdSec(d / "cs")
    cs.enable_tls(server[0], server[1], ca[0])
    cs.start()
    yield cs, ca, bouncer, other_ca
    cs.stop()


def start_milter(workdir: Path, cs: CrowdSec, *args: str) -> MilterProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    proc = MilterProcess(workdir, cs.lapi_url, "unused", "--update-frequency", "0.5", *args)
    proc.args = [a for a in proc.args if a != str(proc.keyfile)]
    proc.args.remove("--api-key-file")
    return proc.start(None)


def test_client_certificate_bouncer(tls_lapi, tmp_path: Path) -> None:
    cs, ca, bouncer, _ = tls_lapi
    proc = start_milter(tmp_path, cs, "--lapi-ca", str(ca[0]), "--lapi-cert", str(bouncer[0]),
                        "--lapi-key", str(bouncer[1]))
    try:
        cs.add_decision(ip="203.0.113.201")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if Mta(proc.port).connect("203.0.113.201")[0] == "reject":
                break
            time.sleep(0.3)
        assert Mta(proc.port).connect("203.0.113.201")[0] == "reject", proc.log()
        assert Mta(proc.port).connect("203.0.113.202")[0] == "continue"
        assert "milter@" in cs.cscli("bouncers", "list")  # CrowdSec sees the cert's CN
    finally:
        proc.stop(signal.SIGKILL)


def test_api_key_over_https_and_a_wrong_ca_is_refused(tls_lapi, tmp_path: Path) -> None:
    cs, ca, _, other_ca = tls_lapi
    key = cs.add_bouncer("https-key")
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    good = MilterProcess(tmp_path / "good", cs.lapi_url, key, "--lapi-ca", str(ca[0]))
    good.start("decision(s) held")
    good.stop(signal.SIGKILL)
    bad = MilterProcess(tmp_path / "bad", cs.lapi_url, key, "--lapi-ca", str(other_ca[0]))
    bad.start("stream pull failed")  # the reason is on that same line
    bad.stop(signal.SIGKILL)
    assert "CERTIFICATE_VERIFY_FAILED" in bad.log() or "certificate" in bad.log().lower()
    assert key not in bad.log()



def test_a_ca_without_key_usage_is_refused_saying_what_to_do(tls_lapi, tmp_path: Path) -> None:
    """The CA that signed LAPI's certificate, reissued from its key without keyUsage (what
    `openssl req -x509` makes by default): refused on every Python, as Python 3.13 refuses
    it, and the log line names the problem and the fix."""
    cs, ca, _, _ = tls_lapi
    twin = make_ca(tmp_path, "test-ca", key_usage=False, key=ca[1], file_name="old-ca")
    assert has_key_usage(ca[0]) and not has_key_usage(twin[0])
    key = cs.add_bouncer("old-ca-key")
    (tmp_path / "milter").mkdir()
    proc = MilterProcess(tmp_path / "milter", cs.lapi_url, key, "--lapi-ca", str(twin[0]))
    proc.start("stream pull failed")
    proc.stop(signal.SIGKILL)
    failed = [line for line in proc.log().splitlines() if "stream pull failed" in line]
    assert "CA cert does not include key usage extension" in failed[0], failed
    assert "--lapi-ca" in failed[0] and "keyUsage=critical,keyCertSign,cRLSign" in failed[0]
    assert key not in proc.log()
