"""Run the real crowdsec-milter program as a subprocess, and talk to it as an MTA would."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from eventschema import read_events
from miltertest import MilterConnection
from miltertest import constants as c
from ports import free_port

EXE = str(Path(sys.executable).parent / "crowdsec-milter")


def metric(text: str, name: str) -> float:
    """Sum of the samples of `name` (a bare name, or a name with its {labels}) in a
    Prometheus text page; fails when there is none."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, name
    return total


def scrape(port: int, name: str) -> float:
    """One metric from the milter's /metrics on `port`; 0 while it has no sample yet."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    try:
        return metric(text, name)
    except AssertionError:
        return 0.0


class MilterProcess:
    """crowdsec-milter listening on a loopback port, its stderr kept in a file."""

    def __init__(self, workdir: Path, lapi_url: str, key: str, *args: str) -> None:
        self.port = free_port()
        self.keyfile = workdir / "api.key"
        self.keyfile.write_text(key + "\n")
        self.keyfile.chmod(0o600)
        self.logfile = workdir / "milter.log"
        self.events = workdir / "events.log"
        self.args = ["--socket", f"inet:{self.port}@127.0.0.1", "--lapi-url", lapi_url,
                     "--api-key-file", str(self.keyfile), "--event-log", str(self.events),
                     "--log-level", "debug", *args]
        if "--state-file" not in args:  # the default, in /var/lib, would be shared by tests
            self.args += ["--state-file", "none"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: str | None = "decision(s) held",
              env: dict[str, str] | None = None,
              nofile: tuple[int, int] | None = None) -> MilterProcess:
        """Start and wait until the socket accepts and `wait_ready` is in the log; `env`
        adds variables (NOTIFY_SOCKET, ...); `nofile` sets the (soft, hard) limit of open
        files the program starts with, as systemd's LimitNOFILE= would."""
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("CROWDSEC_MILTER_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        env = {**base, **(env or {})}
        self._log = open(self.logfile, "ab")  # noqa: SIM115
        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = subprocess.Popen([EXE, *self.args], stdout=self._log, stderr=self._log,
                                     env=env, cwd="/", preexec_fn=limit)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milter exited {self.proc.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if wait_ready is None or wait_ready in self.log():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"milter did not start: {self.log()}")

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> float:
        """Send `sig`, return seconds until the process exited."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self.events.is_file():
            read_events(self.events)  # every line this milter wrote conforms to the schema
        return time.monotonic() - started


class Mta:
    """One milter-protocol conversation, as Postfix would hold it (PyPI's miltertest)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        # Commands the milter does not answer (no-reply) must not wait on Nagle + delayed ACK.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = MilterConnection(self.sock)
        # Offer every action but SETSYMLIST (miltertest cannot decode the macro lists a
        # milter sends back with it; the milter then asks for MAIL, as with any MTA that
        # does not offer it), and no protocol bit that would hide a reply from us.
        self.conn.optneg_mta(actions=c.SMFI_V6_ACTS & ~c.SMFIF_SETSYMLIST,
                             protocol=c.SMFI_V6_PROT, strict=False)

    def _reply(self, r: tuple) -> tuple[str, str]:
        """('continue'|'reject'|'tempfail'|'accept'|'noreply', reply text)."""
        if r is None:
            return "noreply", ""
        code = r[0]
        if code == c.SMFIR_REPLYCODE:
            smtp = r[1]["smtpcode"]
            return ("reject" if smtp[:1] == "5" else "tempfail"), f"{smtp} {r[1]['text']}"
        return {c.SMFIR_CONTINUE: "continue", c.SMFIR_REJECT: "reject",
                c.SMFIR_TEMPFAIL: "tempfail", c.SMFIR_ACCEPT: "accept"}.get(code, code), ""

    def _ask(self, cmd: str, **args: object) -> tuple[str, str]:
        nr = {c.SMFIC_CONNECT: c.SMFIP_NR_CONN, c.SMFIC_HELO: c.SMFIP_NR_HELO,
              c.SMFIC_MAIL: c.SMFIP_NR_MAIL, c.SMFIC_RCPT: c.SMFIP_NR_RCPT}.get(cmd, 0)
        self.conn._send(cmd, **args)
        if self.conn.protocol_flags & nr:
            return "noreply", ""
        return self._reply(self.conn.recv())

    def connect(self, ip: str, host: str = "client.example") -> tuple[str, str]:
        family = c.SMFIA_INET6 if ":" in ip else c.SMFIA_INET
        return self._ask(c.SMFIC_CONNECT, hostname=host, family=family, port=25, address=ip)

    def helo(self, name: str) -> tuple[str, str]:
        return self._ask(c.SMFIC_HELO, helo=name)

    def mail(self, sender: str) -> tuple[str, str]:
        return self._ask(c.SMFIC_MAIL, args=[sender])

    def rcpt(self, rcpt: str, macros: dict[str, str] | None = None) -> tuple[str, str]:
        if macros:
            self.conn.send_macro(c.SMFIC_RCPT, **macros)
        return self._ask(c.SMFIC_RCPT, args=[rcpt])

    def data(self) -> tuple[str, str]:
        return self._ask(c.SMFIC_DATA)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn._send(c.SMFIC_QUIT)
        self.sock.close()


def verdict(proc: MilterProcess, ip: str) -> str:
    """What the milter answers a connect from `ip` ('reject', 'continue', ...)."""
    mta = Mta(proc.port)
    try:
        return mta.connect(ip)[0]
    finally:
        mta.close()
