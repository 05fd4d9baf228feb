"""docker-compose.yml brought up by a real engine, and the loop proven through the stack.

Debian's dockerd runs privately (integration/docker_engine.py: own data root, socket,
bridge and address pool; stopped by its PID, nothing left behind). With no image registry,
the base images are stand-ins built from debootstrap (integration/standins), tagged with the
names the project's files use, so docker-compose.yml and the Dockerfiles run unchanged with
the Compose of this Debian release (v1 `docker-compose` on Debian 12, v2 `docker compose` on
Debian 13).

The tests run in order on one stack: CrowdSec is started first, alone, so it reads its
acquisition before the milter has made events.log (the race force_inotify fixes); then the
milter and Postfix. Clients are played through Postfix's XCLIENT, which the test allows with
the Postfix image's XCLIENT_HOSTS setting for the engine's own address pool only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from docker_engine import PATH, Engine
from ports import free_port
from real_postfix import Transcript, session
from waiting import eventually

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
LOG = "/var/log/crowdsec-milter/events.log"
ATTACKER, BYSTANDER = "203.0.113.66", "192.0.2.77"


def compose_command() -> list[str]:
    """The Compose of this release: v2 (`docker compose`) if the docker CLI has it, else v1."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                        env={**os.environ, "PATH": PATH}, timeout=60)
    return ["docker", "compose"] if v2.returncode == 0 else ["docker-compose"]


@dataclass
class Stack:
    engine: Engine
    project: str
    port: int
    v6_subnet: str
    files: list[Path]
    timings: dict[str, float] = field(default_factory=dict)
    build_output: str = ""

    def compose(self, *args: str, check: bool = True, timeout: float = 900
                ) -> subprocess.CompletedProcess[str]:
        cmd = [*compose_command(), "-p", self.project]
        for f in self.files:
            cmd += ["-f", str(f)]
        env = {**self.engine.env, "SMTP_PORT": str(self.port), "IPV6_SUBNET": self.v6_subnet,
               # v1: build through the engine's API (no docker CLI builder in between);
               # v2: BuildKit's plain progress keeps every RUN step's output
               "COMPOSE_DOCKER_CLI_BUILD": "0", "DOCKER_BUILDKIT": "0",
               "BUILDKIT_PROGRESS": "plain"}
        out = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO,
                             env=env, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {out.returncode}:\n"
                                 f"{out.stdout[-4000:]}{out.stderr[-4000:]}")
        return out

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def exec(self, service: str, *args: str, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
        return self.compose("exec", "-T", service, *args, check=check, timeout=120)

    def cscli(self, *args: str) -> str:
        return self.exec("crowdsec", "cscli", *args).stdout

    def health(self, service: str) -> str:
        return self.engine.docker("inspect", "-f", "{{.State.Health.Status}}",
                                  self.container(service), check=False).stdout.strip()

    def events(self) -> list[dict[str, object]]:
        text = self.exec("milter", "cat", LOG, check=False).stdout
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def gateway(self) -> str:
        """The compose network's IPv4 gateway: where host clients appear to come from."""
        net = self.engine.docker("network", "inspect", f"{self.project}_default").stdout
        for cfg in json.loads(net)[0]["IPAM"]["Config"]:
            if ":" not in cfg["Subnet"]:
                return cfg.get("Gateway") or str(next(ipaddress.ip_network(cfg["Subnet"]).hosts()))
        raise AssertionError(net)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False).stdout


def ula_subnet() -> str:
    """A random IPv6 ULA /64 (fd00::/8), so parallel runs on one machine never clash."""
    bits = random.getrandbits(40)
    return f"fd{bits >> 32:02x}:{(bits >> 16) & 0xffff:04x}:{bits & 0xffff:04x}:1::/64"


def smtp_plain(host: str, port: int, rcpt: str = "bob@example.org", *more: str
               ) -> list[tuple[int, str]]:
    """One SMTP session without XCLIENT: (code, text) of greeting, EHLO, MAIL, RCPT..."""
    replies: list[tuple[int, str]] = []
    with socket.create_connection((host, port), timeout=20) as s, s.makefile("rb") as f:
        def reply() -> None:
            text = []
            while True:
                line = f.readline().decode(errors="replace").rstrip("\r\n")
                if not line:
                    raise ConnectionError("closed")
                text.append(line[4:])
                if line[3:4] != "-":
                    replies.append((int(line[:3]), " ".join(text)))
                    return

        try:
            reply()
            for cmd in ("EHLO tester.example", "MAIL FROM:<a@example.net>",
                        *(f"RCPT TO:<{r}>" for r in (rcpt, *more)), "QUIT"):
                s.sendall(cmd.encode() + b"\r\n")
                reply()
        except (ConnectionError, OSError):
            pass
    return replies


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("compose")
    engine = Engine()
    t0 = time.monotonic()
    engine.start()
    try:
        override = tmp / "test-override.yml"
        # XCLIENT for the engine's own address pool only: the test plays its clients
        override.write_text("services:\n  postfix:\n    environment:\n"
                            f"      XCLIENT_HOSTS: \"{engine.compose_pool}\"\n")
        s = Stack(engine, f"cmt{engine.tag}", free_port(), ula_subnet(),
                  [REPO / "docker-compose.yml", override])
        s.timings["engine"] = time.monotonic() - t0
        engine.base_image("debian:bookworm-slim")
        s.timings["base image"] = time.monotonic() - t0
        config = _config_images(s)
        engine.standin(config["python"], REPO / "integration/standins/python")
        engine.standin(config["crowdsec"], REPO / "integration/standins/crowdsec")
        s.timings["stand-ins"] = time.monotonic() - t0
        # v2 builds the services side by side by itself; v1 only when asked
        parallel = ["--parallel"] if compose_command() == ["docker-compose"] else []
        s.build_output = _combined(s.compose("build", "--no-cache", *parallel))
        s.timings["compose build"] = time.monotonic() - t0
        # CrowdSec alone first: its acquisition finds no events.log yet
        s.compose("up", "-d", "crowdsec")
        assert eventually(lambda: "crowdsec-milter" in s.cscli("bouncers", "list"), 120), \
            s.logs()
        # docker exec (cscli here, HEALTHCHECK for the milter) must enter the container's
        # root: it does not when dockerd runs in a plain chroot (see docker_engine.py)
        assert s.exec("crowdsec", "test", "-x", "/docker_start.sh", check=False
                      ).returncode == 0, "docker exec does not enter the container's root"
        assert s.exec("crowdsec", "test", "-e", LOG, check=False).returncode != 0
        s.compose("up", "-d")
        assert eventually(lambda: s.health("milter") == "healthy", 180, 1), s.logs()
        assert eventually(lambda: _greets(s.port), 60, 0.5), s.logs()
        s.timings["healthy"] = time.monotonic() - t0
        yield s
    finally:
        try:
            if engine.proc is not None:
                subprocess.run([*compose_command(), "-p", f"cmt{engine.tag}", "-f",
                                str(REPO / "docker-compose.yml"), "down", "-v"],
                               capture_output=True, env={**engine.env, "SMTP_PORT": "0"},
                               cwd=REPO, timeout=300)
        finally:
            engine.stop()


def _combined(out: subprocess.CompletedProcess[str]) -> str:
    return out.stdout + out.stderr


def _config_images(s: Stack) -> dict[str, str]:
    """The base images the project names: FROM of the milter Dockerfile, crowdsec's image."""
    froms = re.findall(r"^FROM\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    assert len(set(froms)) == 1, froms
    config = s.compose("config").stdout
    crowdsec = re.search(r"^\s+image:\s*(crowdsecurity/crowdsec:\S+)", config, re.M)
    assert crowdsec, config
    return {"python": froms[0], "crowdsec": crowdsec.group(1)}


def _greets(port: int) -> bool:
    try:
        return smtp_plain("127.0.0.1", port)[0][0] == 220
    except (OSError, IndexError):
        return False


def _rejected(t: Transcript) -> bool:
    return t.code("MAIL") == 550 and "blocked by CrowdSec" in t.text()


def _accepted(port: int, ip: str) -> bool:
    return session(port, ip, rcpts=["bob@example.org"]).code("<message>") == 250


# -- the tests, in order, on one stack ------------------------------------------------------

def test_the_build_shows_no_alarming_warnings(stack: Stack) -> None:
    out = stack.build_output  # built with --no-cache: every RUN step ran
    assert "SYS_UID_MAX" not in out, out[-3000:]
    assert "Running pip as the 'root' user" not in out, out[-3000:]


def test_clean_mail_gets_250(stack: Stack) -> None:
    assert _accepted(stack.port, BYSTANDER), stack.logs()
    # and without XCLIENT, as a user's first try would be
    codes = [c for c, _ in smtp_plain("127.0.0.1", stack.port)]
    assert codes[:4] == [220, 250, 250, 250], codes


def test_a_cscli_ban_rejects_at_connect_and_unban_lets_in(stack: Stack) -> None:
    # A manual ban applies to any address, the bridge gateway (what a host client is seen
    # as) included: crowdsecurity/whitelists only drops events, not decisions.
    gw = stack.gateway()
    stack.cscli("decisions", "add", "--ip", gw, "--duration", "10m", "--reason", "test")
    try:
        def banned() -> bool:
            replies = smtp_plain("127.0.0.1", stack.port)
            return any(code == 554 for code, _ in replies) and not any(
                code == 250 for code, text in replies[2:3])
        assert eventually(banned, 40, 1), smtp_plain("127.0.0.1", stack.port)
    finally:
        stack.cscli("decisions", "delete", "--ip", gw)
    assert eventually(lambda: [c for c, _ in smtp_plain("127.0.0.1", stack.port)][:3]
                      == [220, 250, 250], 40, 1), smtp_plain("127.0.0.1", stack.port)


def test_a_dictionary_attack_is_banned_by_the_shipped_scenario(stack: Stack) -> None:
    # CrowdSec started before events.log existed (see the fixture).
    # From the host itself first, without XCLIENT: the client is the bridge gateway, a
    # private address that crowdsecurity/whitelists drops, so this never earns a ban
    # (docs/deploy.md used to say it locks out every local client).
    gw = stack.gateway()
    for batch in range(3):
        codes = [c for c, _ in smtp_plain("127.0.0.1", stack.port,
                                          *[f"host{batch}-{i}@example.org" for i in range(5)])]
        assert codes[3:8] == [550] * 5, codes
    for batch in range(3):
        t = session(stack.port, ATTACKER, data=False,
                    rcpts=[f"guess{batch}-{i}@example.org" for i in range(5)])
        assert t.rcpt_codes == [550] * 5, t.text()
    assert eventually(lambda: _rejected(session(stack.port, ATTACKER,
                                                rcpts=["bob@example.org"])), 60, 1), \
        stack.cscli("metrics") + stack.logs()
    alerts = json.loads(stack.cscli("decisions", "list", "-o", "json") or "null") or []
    banned = {(d["value"], a["scenario"]) for a in alerts for d in a.get("decisions") or []}
    assert (ATTACKER, "crowdsec-milter/dictionary-attack") in banned, alerts
    # the host's attack came first in the same log: read, and whitelisted
    assert gw not in {value for value, _ in banned}, alerts
    assert _accepted(stack.port, BYSTANDER)
    assert [c for c, _ in smtp_plain("127.0.0.1", stack.port)][:4] == [220, 250, 250, 250]
    assert {e["client_ip"] for e in stack.events() if e["event"] == "rcpt_rejected"} \
        == {ATTACKER, gw}


def test_events_and_bans_survive_a_milter_restart(stack: Stack) -> None:
    before = stack.events()
    assert before
    stack.compose("restart", "milter")
    assert eventually(lambda: stack.health("milter") == "healthy", 120, 1), stack.logs()
    assert stack.events()[:len(before)] == before
    assert eventually(lambda: _rejected(session(stack.port, ATTACKER,
                                                rcpts=["bob@example.org"])), 30, 1)
    # new events are appended and CrowdSec still reads the file
    read_before = _lines_read(stack)
    t = session(stack.port, "198.51.100.5", rcpts=["nobody-here@example.org"], data=False)
    assert t.rcpt_codes == [550]
    assert eventually(lambda: any(e["client_ip"] == "198.51.100.5" for e in stack.events()), 20)
    assert eventually(lambda: _lines_read(stack) > read_before, 30, 1)


def _lines_read(stack: Stack) -> int:
    """Lines CrowdSec's acquisition read from the event log (`cscli metrics`)."""
    # 1.4.6 prints one JSON object per table, back to back: acquisition comes first
    acquisition, _ = json.JSONDecoder().raw_decode(stack.cscli("metrics", "-o", "json"))
    return sum(int(v.get("reads", 0)) for k, v in acquisition.items() if LOG in k)


def test_an_ipv6_client_keeps_its_address(stack: Stack) -> None:
    postfix = json.loads(stack.engine.docker("inspect", stack.container("postfix")).stdout)[0]
    nets = postfix["NetworkSettings"]["Networks"]
    v6 = [n["GlobalIPv6Address"] for n in nets.values() if n.get("GlobalIPv6Address")]
    gw6 = [n["IPv6Gateway"] for n in nets.values() if n.get("IPv6Gateway")]
    assert v6 and gw6, nets
    assert ipaddress.ip_address(v6[0]) in ipaddress.ip_network(stack.v6_subnet)
    # a client on the compose network's IPv6 side: Postfix and the milter see its address
    rcpt = "ipv6-probe@example.org"
    replies = smtp_plain(v6[0], 25, rcpt=rcpt)
    assert [c for c, _ in replies][:4] == [220, 250, 250, 550], replies
    assert eventually(lambda: any(e.get("rcpt") == rcpt or rcpt in json.dumps(e)
                                  for e in stack.events()), 20)
    seen = [e["client_ip"] for e in stack.events() if rcpt in json.dumps(e)]
    assert seen == [gw6[0]], seen


def test_down_v_leaves_nothing_behind(stack: Stack) -> None:
    stack.compose("down", "-v")
    d = stack.engine.docker
    assert d("ps", "-aq", "--filter", f"label=com.docker.compose.project={stack.project}"
             ).stdout.strip() == ""
    assert stack.project not in d("volume", "ls", "-q").stdout
    assert stack.project not in d("network", "ls", "--format", "{{.Name}}").stdout
    engine = stack.engine
    engine.stop()
    assert engine.leftovers() == []
    print("timings (s):", {k: round(v) for k, v in stack.timings.items()})
