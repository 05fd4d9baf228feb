"""Deployment files proved without a Docker engine: docker-compose validates the compose
file, every path, variable, flag and port it uses is checked against the repo and the code,
each entrypoint script runs natively, and systemd verifies the unit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from crowdsec_milter.cli import build_parser, parse

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"


def options() -> set[str]:
    return {o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")}


def test_compose_file_is_valid() -> None:
    out = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr


def test_every_path_the_deployment_uses_exists() -> None:
    text = COMPOSE.read_text()
    mounts = re.findall(r"^\s*- (\./[^:\s]+):", text, re.M)
    builds = re.findall(r"^\s*build: (\S+)", text, re.M)
    assert mounts and builds
    for path in mounts + builds:
        assert (REPO / path).exists(), path
    for dockerfile in (REPO / "Dockerfile", REPO / "docker/postfix/Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY") and "--from" not in line:
                for src in line.split()[1:-1]:
                    assert (dockerfile.parent / src).exists(), (dockerfile, src)
    acquis = (REPO / "conf/crowdsec/acquis.d/crowdsec-milter.yaml").read_text()
    assert "/var/log/crowdsec-milter/events.log" in acquis
    assert "milter-events:/var/log/crowdsec-milter" in text


def test_variables_flags_and_ports_match_the_code() -> None:
    opts = options()
    used = set()
    for f in (COMPOSE, REPO / "Dockerfile", REPO / "docker/healthcheck.py",
              REPO / "docker/milter-entrypoint.sh", REPO / "conf/crowdsec-milter.conf.example"):
        used |= set(re.findall(r"CROWDSEC_MILTER_([A-Z_]+)", f.read_text()))
    used -= {"BIN"}  # the entrypoint's own override of the program path
    assert used
    for name in used:
        assert "--" + name.lower().replace("_", "-") in opts, name
    for line in (REPO / "conf/crowdsec-milter.conf.example").read_text().splitlines():
        if line and not line.startswith("#"):
            assert "--" + line.split("=")[0].strip() in opts, line
    text = COMPOSE.read_text()
    milter_port = re.search(r"CROWDSEC_MILTER_SOCKET: inet:(\d+)@", text).group(1)  # type: ignore[union-attr]
    assert f"MILTER_ADDRESS: inet:milter:{milter_port}" in text
    assert f"EXPOSE {milter_port}" in (REPO / "Dockerfile").read_text()
    assert "CROWDSEC_MILTER_LAPI_URL: http://crowdsec:8080/" in text


def fake_program(folder: Path, name: str) -> Path:
    """A stand-in that records its arguments, one per line."""
    path = folder / name
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{folder}/{name}.args"\n')
    path.chmod(0o755)
    return path


def test_milter_entrypoint_waits_for_the_key_then_execs(tmp_path: Path) -> None:
    prog = fake_program(tmp_path, "crowdsec-milter")
    key = tmp_path / "key"
    env = {**os.environ, "CROWDSEC_MILTER_API_KEY_FILE": str(key),
           "CROWDSEC_MILTER_BIN": str(prog), "KEY_WAIT_SECONDS": "10"}
    proc = subprocess.Popen(["sh", str(REPO / "docker/milter-entrypoint.sh"), "--dry-run"],
                            env=env)
    time.sleep(1.5)
    assert proc.poll() is None  # still waiting for the key
    key.write_text("k\n")
    assert proc.wait(timeout=10) == 0
    assert (tmp_path / "crowdsec-milter.args").read_text() == "--dry-run\n"
    env["KEY_WAIT_SECONDS"] = "1"
    env["CROWDSEC_MILTER_API_KEY_FILE"] = str(tmp_path / "never")
    out = subprocess.run(["sh", str(REPO / "docker/milter-entrypoint.sh")], env=env,
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "no bouncer key" in out.stderr


def test_crowdsec_init_creates_the_key_once(tmp_path: Path) -> None:
    cscli = fake_program(tmp_path, "cscli")
    keyfile = tmp_path / "secrets" / "key"
    env = {**os.environ, "CSCLI": str(cscli), "MILTER_KEY_FILE": str(keyfile)}
    for _ in range(2):
        out = subprocess.run(["sh", str(REPO / "docker/crowdsec-init.sh")], env=env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    key = keyfile.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{48}", key)
    calls = (tmp_path / "cscli.args").read_text().split("\n")
    assert calls.count("add") == 1 and key in calls  # created once, with that key


def test_postfix_entrypoint_configures_a_valid_postfix(tmp_path: Path) -> None:
    conf = tmp_path / "postfix"
    conf.mkdir()
    env = {**os.environ, "POSTFIX_CONFIG_DIR": str(conf), "MILTER_ADDRESS": "inet:milter:8895"}
    out = subprocess.run(["sh", str(REPO / "docker/postfix/entrypoint.sh"), "--configure-only"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    main_cf = subprocess.run(["postconf", "-c", str(conf), "-n"], capture_output=True,
                             text=True).stdout
    assert "smtpd_milters = { inet:milter:8895, default_action=accept }" in main_cf
    assert "{rcpt_mailer}" in main_cf


def test_healthcheck_script(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, "CROWDSEC_MILTER_SOCKET": f"inet:{port}@127.0.0.1",
               "CROWDSEC_MILTER_METRICS_LISTEN": ""}
        ok = subprocess.run([sys.executable, str(REPO / "docker/healthcheck.py")], env=env)
    assert ok.returncode == 0
    bad = subprocess.run([sys.executable, str(REPO / "docker/healthcheck.py")], env=env)
    assert bad.returncode == 1


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (REPO / "conf/systemd/crowdsec-milter.service").read_text()
    exe = str(Path(sys.executable).parent / "crowdsec-milter")
    copy = tmp_path / "crowdsec-milter.service"
    copy.write_text(unit.replace("/usr/local/bin/crowdsec-milter", exe))
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    for needed in ("User=crowdsec-milter", "ProtectSystem=strict", "NoNewPrivileges=true",
                   "CapabilityBoundingSet=\n", "Type=simple"):
        assert needed in unit


def test_example_config_parses(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k\n")
    key.chmod(0o600)
    s = parse(["-c", str(REPO / "conf/crowdsec-milter.conf.example"), "--api-key-file",
               str(key)])
    assert s.socket == "inet:8895@127.0.0.1" and s.metrics_listen == ("127.0.0.1", 9395)
    assert s.action_map["captcha"] == "tempfail"
