"""SMTP-aware options on the real milter program, driven over its socket as an MTA would
(PyPI's miltertest): authenticated clients exempt, trap recipients reported; and
`crowdsec-milter config`, the settings in force with where each came from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from lapi_server import FakeLapi
from milter_process import MilterProcess, Mta
from miltertest import constants as c

EXE = str(Path(sys.executable).parent / "crowdsec-milter")
KEY = "s3cret-key-value"


def run(*args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CROWDSEC_MILTER_")}
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=30,
                          env={**full, **(env or {})}, cwd=cwd)


def events_of(proc: MilterProcess) -> list[dict]:
    return [json.loads(x) for x in proc.events.read_text().splitlines()]


@pytest.mark.parametrize("stage", ["connect", "helo"])
def test_exempt_authenticated_is_refused_before_mail(stage: str) -> None:
    for out in (run("--api-key", "k", "--exempt-authenticated", "--stage", stage),
                run("--api-key", "k", env={"CROWDSEC_MILTER_EXEMPT_AUTHENTICATED": "true",
                                           "CROWDSEC_MILTER_STAGE": stage})):
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        assert f"--exempt-authenticated needs --stage mail or rcpt, not {stage}" in lines[0]


def test_authenticated_client_is_exempt_and_still_reported(
        tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.add("203.0.113.7")
    proc = MilterProcess(tmp_path, url, lapi.key, "--stage", "mail",
                         "--exempt-authenticated").start()
    try:
        mta = Mta(proc.port)
        mta.connect("203.0.113.7")
        mta.helo("laptop")
        mta.conn.send_macro(c.SMFIC_MAIL, **{"{auth_authen}": "alice",
                                            "{auth_type}": "PLAIN"})
        assert mta.mail("<alice@example.org>")[0] == "continue"
        mta.close()
        mta = Mta(proc.port)
        mta.connect("203.0.113.7")
        mta.helo("bot")
        verdict, text = mta.mail("<x@example.net>")
        assert verdict == "reject" and text.startswith("550 5.7.1")
        mta.close()
    finally:
        proc.stop()
    blocked = [e for e in events_of(proc) if e["event"] == "client_blocked"]
    assert [(e["action"], e["enforced"]) for e in blocked] == [
        ("exempt", False), ("reject", True)]
    assert blocked[0]["decision_value"] == "203.0.113.7"
    assert blocked[0]["decision_type"] == "ban"


def test_without_the_flag_an_authenticated_client_is_blocked(
        tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.add("203.0.113.8")
    proc = MilterProcess(tmp_path, url, lapi.key, "--stage", "mail").start()
    try:
        mta = Mta(proc.port)
        mta.connect("203.0.113.8")
        mta.helo("laptop")
        mta.conn.send_macro(c.SMFIC_MAIL, **{"{auth_authen}": "alice"})
        assert mta.mail("<alice@example.org>")[0] == "reject"
        mta.close()
    finally:
        proc.stop(signal.SIGKILL)


def test_trap_recipients_are_reported_and_answered_as_the_mta_said(
        tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    proc = MilterProcess(tmp_path, url, lapi.key, "--stage", "rcpt",
                         "--trap-rcpt", "Trap@Example.org", "--trap-rcpt", "spamtrap-*@*").start()
    try:
        mta = Mta(proc.port)
        mta.connect("192.0.2.5", host="spammer.example")
        mta.helo("spammer")
        mta.mail("<x@y>")
        assert mta.rcpt("<bob@example.org>")[0] == "continue"
        assert mta.rcpt("<TRAP@example.org>")[0] == "continue"
        assert mta.rcpt("<spamtrap-3@example.net>",
                        {"{rcpt_mailer}": "error", "{rcpt_host}": "5.1.1",
                         "{rcpt_addr}": "User unknown"})[0] == "continue"
        mta.close()
    finally:
        proc.stop()
    lines = proc.events.read_text().splitlines()
    traps = [json.loads(x) for x in lines if '"rcpt_trap"' in x]
    assert [(e["rcpt"], e["accepted"], e["status"]) for e in traps] == [
        ("<TRAP@example.org>", True, ""), ("<spamtrap-3@example.net>", False, "5.1.1")]
    assert any('"accepted":true' in x for x in lines)  # a JSON boolean, not text
    assert traps[0]["client_ip"] == "192.0.2.5" and traps[0]["helo"] == "spammer"
    # the rejected trap is a rejected recipient too (the dictionary scenarios count it)
    assert [e["event"] for e in map(json.loads, lines)] == ["rcpt_trap", "rcpt_rejected",
                                                            "rcpt_trap"]


# -- crowdsec-milter config ---------------------------------------------------------------

def settings_of(out: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert out.returncode == 0, out.stderr
    return dict(line.split(" = ", 1) for line in out.stdout.splitlines())


def test_config_names_the_source_of_each_value(tmp_path: Path) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f"api-key = {KEY}\nupdate-frequency = 3\n"
                    "trap-rcpt = [trap@example.org, spamtrap-*@example.org]\n"
                    "stage = helo\n")
    out = run("config", "-c", str(conf), "--stage", "rcpt", "--exempt-authenticated",
              env={"CROWDSEC_MILTER_MODE": "live", "CROWDSEC_MILTER_CACHE_TTL": "30"})
    got = settings_of(out)
    assert got["stage"] == "rcpt (flag)"  # the flag beats the file
    assert got["exempt-authenticated"] == "true (flag)"
    assert got["mode"] == "live (env CROWDSEC_MILTER_MODE)"
    assert got["cache-ttl"] == "30 (env CROWDSEC_MILTER_CACHE_TTL)"
    assert got["update-frequency"] == f"3 (file {conf})"
    assert got["trap-rcpt"] == f"[trap@example.org, spamtrap-*@example.org] (file {conf})"
    assert got["api-key"] == f"******** (file {conf})"
    assert got["socket"] == "inet:8895@127.0.0.1 (default)"
    assert got["action"] == "[ban=reject, captcha=tempfail] (default)"
    assert got["dry-run"] == "false (default)"
    assert got["lapi-ca"] == "(not set) (default)"
    assert KEY not in out.stdout + out.stderr


@pytest.mark.parametrize("how", ["flag", "env", "file"])
def test_config_never_prints_the_key(tmp_path: Path, how: str) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f"api-key = {KEY}\n")
    args = {"flag": ["--api-key", KEY], "env": [], "file": ["-c", str(conf)]}[how]
    env = {"CROWDSEC_MILTER_API_KEY": KEY} if how == "env" else {}
    out = run("config", *args, env=env)
    source = {"flag": "flag", "env": "env CROWDSEC_MILTER_API_KEY", "file": f"file {conf}"}
    assert settings_of(out)["api-key"] == f"******** ({source[how]})"
    assert KEY not in out.stdout + out.stderr


def test_config_with_a_key_file_shows_its_path(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    key.chmod(0o600)
    out = run("config", "--api-key-file", str(key))
    got = settings_of(out)
    assert got["api-key-file"] == f"{key} (flag)" and got["api-key"] == "(not set) (default)"
    assert KEY not in out.stdout


def test_config_with_bad_settings_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for args in (["--api-key", KEY, "--update-frequency", "-1"],
                 ["--api-key", KEY, "--stage", "connect", "--exempt-authenticated"],
                 []):
        out = run("config", *args)
        assert out.returncode == 2 and out.stdout == ""
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert out.stderr.startswith("crowdsec-milter: error: ") and KEY not in out.stderr


def test_config_has_its_own_help() -> None:
    out = run("config", "--help")
    assert out.returncode == 0
    assert out.stdout.startswith("usage: crowdsec-milter config [options]")
    assert "key = value (source)" in out.stdout.replace("\n", " ")
    assert "crowdsec-milter config" in run("--help").stdout
