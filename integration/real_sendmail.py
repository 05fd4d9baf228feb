"""A real Sendmail (Debian's sendmail-bin: 8.17 on Debian 12, 8.18 on 13; unpacked beside
Postfix, whose package conflicts with it) run privately on loopback in front of a milter.

Sendmail has no XCLIENT: tests play other clients by binding their socket to another
address of 127.0.0.0/8. It runs in a UTS namespace of its own with a dotted host name: with
the machine's short name it would sleep a minute trying to qualify it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path("/var/cache/crowdsec-milter-tests/sendmail")
ROOT = CACHE / "root"
BINARY = ROOT / "usr/libexec/sendmail/sendmail"
CF_DIR = ROOT / "usr/share/sendmail/cf"


def ensure_sendmail() -> Path:
    """Download and unpack Debian's Sendmail once; the binary's path."""
    if BINARY.exists():
        return BINARY
    CACHE.mkdir(parents=True, exist_ok=True)
    pkgs = ["sendmail-bin", "sendmail-cf", "sendmail-base"]
    got = subprocess.run(["apt-get", "download", *pkgs], cwd=CACHE, capture_output=True)
    if got.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(["apt-get", "download", *pkgs], cwd=CACHE, check=True,
                       capture_output=True)
    for deb in CACHE.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(ROOT)], check=True)
    return BINARY


class Sendmail:
    def __init__(self, workdir: Path, milter_port: int, port: int) -> None:
        self.dir = workdir
        self.port = port
        self.milter_port = milter_port
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(self) -> Path:
        ensure_sendmail()
        (self.dir / "queue").mkdir(parents=True, exist_ok=True)
        (self.dir / "statistics").touch()
        (self.dir / "service.switch").write_text("hosts files\naliases files\n")
        ours = (REPO / "conf/sendmail/crowdsec-milter.mc").read_text().replace(
            "inet:8895@127.0.0.1", f"inet:{self.milter_port}@127.0.0.1")
        d = self.dir
        mc = f"""divert(-1)
divert(0)dnl
include(`{CF_DIR}/m4/cf.m4')dnl
OSTYPE(`bsd4.4')dnl
define(`confEBINDIR', `/usr/sbin')dnl
define(`LOCAL_MAILER_PATH', `/bin/true')dnl
define(`LOCAL_SHELL_PATH', `/bin/sh')dnl
define(`confDOMAIN_NAME', `mx-sendmail.example')dnl
define(`confSERVICE_SWITCH_FILE', `{d}/service.switch')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`QUEUE_DIR', `{d}/queue')dnl
define(`STATUS_FILE', `{d}/statistics')dnl
define(`confPID_FILE', `{d}/sendmail.pid')dnl
define(`ALIAS_FILE', `{d}/aliases')dnl
define(`confQUEUE_LA', `500')dnl
define(`confREFUSE_LA', `1000')dnl
define(`confDONT_BLAME_SENDMAIL', `GroupWritableDirPathSafe,TrustStickyBit,MapInUnsafeDirPath')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`nouucp', `reject')dnl
FEATURE(`no_default_msa')dnl
LOCAL_DOMAIN(`example.org')dnl
DAEMON_OPTIONS(`Port={self.port}, Addr=127.0.0.1, Name=MTA')dnl
{ours}
MAILER(`local')dnl
MAILER(`smtp')dnl
"""
        (d / "sendmail.mc").write_text(mc)
        cf = d / "sendmail.cf"
        with open(cf, "w") as out:
            subprocess.run(["m4", str(d / "sendmail.mc")], stdout=out, check=True)
        # Without a readable alias database Sendmail queues every local recipient instead
        # of checking it at RCPT time ("Recipient ok (will queue)").
        (d / "aliases").write_text("postmaster: root\nabuse: root\n")
        subprocess.run(["unshare", "--uts", "sh", "-c",
                        f"hostname mx-sendmail.example && exec {BINARY} -C {cf} -bi"],
                       check=True, capture_output=True, timeout=60)
        return cf

    def start(self) -> Sendmail:
        cf = self.configure()
        self._log = open(self.dir / "sendmail.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["unshare", "--uts", "sh", "-c",
             f"hostname mx-sendmail.example && exec {BINARY} -C {cf} -bD"],
            stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "sendmail.out").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sendmail does not listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        subprocess.run(["pkill", "-f", str(self.dir / "sendmail.cf")], capture_output=True)
        self._log.close()


def session(port: int, source_ip: str, rcpts: list[str]) -> list[tuple[str, str]]:
    """One SMTP session from `source_ip` (a 127.x address); (command, reply) pairs."""
    s = socket.socket()
    s.bind((source_ip, 0))
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    f = s.makefile("rb")

    def reply() -> str:
        lines = []
        while True:
            line = f.readline().decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines[-1]

    out = [("<greeting>", reply())]
    try:
        for cmd in ["EHLO client.example", "MAIL FROM:<sender@example.net>",
                    *(f"RCPT TO:<{r}>" for r in rcpts), "QUIT"]:
            s.sendall(cmd.encode() + b"\r\n")
            out.append((cmd, reply()))
            if out[-1][1].startswith("421"):
                break
    except OSError:
        pass
    finally:
        s.close()
    return out
