"""A real Postfix (Debian's package) run privately for tests, and an SMTP client that plays
any client address through it with XCLIENT.

Each instance has its own config, queue and data folders and loopback port (IPv4 and IPv6);
unknown local users get `550 5.1.1`, foreign domains `554 5.7.1 Relay access denied`, and
accepted mail goes to the discard transport. Several instances run side by side.
"""

from __future__ import annotations

import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ports import free_port

LOCAL_USERS = ("postmaster", "abuse", "alice", "bob")


class Postfix:
    """One private Postfix instance."""

    def __init__(self, workdir: Path, milter: str | None, port: int | None = None, *,
                 hostname: str = "mx-test.example", extra: dict[str, str] | None = None,
                 services: dict[int, str] | None = None,
                 deliver_to: str | None = None) -> None:
        self.dir = workdir
        # a system user whose mail is delivered for real (local(8), a mailbox file under
        # mail_dir) instead of discarded: where a test reads the headers a milter added
        self.deliver_to = deliver_to
        self.mail_dir = workdir / "mail"
        self.port = port or free_port()
        self.milter = milter
        self.hostname = hostname
        self.extra = extra or {}
        # more smtpd listeners on 127.0.0.1, each with its own smtpd_milters ("" = none):
        # configurations compared on one instance share its queue, cleanup and qmgr
        self.services = services or {}
        self.etc = workdir / "etc"
        self.maillog = workdir / "log" / "maillog"

    def _postconf(self, *args: str) -> None:
        subprocess.run(["postconf", "-c", str(self.etc), *args], check=True,
                       capture_output=True, text=True)

    def configure(self) -> None:
        for sub in ("etc", "spool", "data", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # Postfix's daemons run as the postfix user: they must reach the queue (pytest's
        # temporary folders are 0700) and own the data folder.
        for folder in (self.dir, *self.dir.parents):
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                folder.chmod(mode | stat.S_IXOTH)
        shutil.chown(self.dir / "data", "postfix", "postfix")
        shutil.copy("/etc/postfix/master.cf", self.etc / "master.cf")
        users = ", ".join(f"{u}=ok" for u in LOCAL_USERS)
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.dir / "spool"),
            "data_directory": str(self.dir / "data"),
            "myhostname": self.hostname,
            "mydomain": "example.org",
            "myorigin": "example.org",
            "mydestination": "example.org",
            "local_recipient_maps": f"inline:{{{users}}}",
            "alias_maps": "",
            "alias_database": "",
            "local_transport": "discard:",
            "default_transport": "discard:",
            "relay_transport": "discard:",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "all",
            "mynetworks": "127.0.0.0/8 [::1]/128",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8, [::1]/128",
            "smtpd_delay_reject": "yes",
            "milter_protocol": "6",
            "milter_default_action": "accept",
            "milter_connect_macros": "j {daemon_name} {daemon_addr} v _ {client_name}",
            "milter_rcpt_macros": "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.dir),
            "biff": "no",
            "smtputf8_enable": "no",
            "default_process_limit": "200",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "anvil_rate_time_unit": "60s",
        }
        if self.deliver_to:
            self.mail_dir.mkdir(exist_ok=True)
            self.mail_dir.chmod(0o1777)
            users = ", ".join(f"{u}=ok" for u in (*LOCAL_USERS, self.deliver_to))
            settings.update({"local_transport": "local", "local_recipient_maps":
                             f"inline:{{{users}}}", "mail_spool_directory": str(self.mail_dir),
                             "mailbox_command": "", "home_mailbox": ""})
        if self.milter:
            settings["smtpd_milters"] = f"{{ {self.milter}, default_action=accept }}"
        settings.update(self.extra)
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        # No chroot (the private folders hold no chroot copy of /etc), and smtpd on our port.
        self._postconf("-F", "*/*/chroot = n")
        self._postconf("-M#", "smtp/inet")
        for listen in (f"127.0.0.1:{self.port}", f"[::1]:{self.port}"):
            self._postconf("-M", f"{listen}/inet={listen} inet n - n - - smtpd")
        for port, milters in self.services.items():
            listen = f"127.0.0.1:{port}"
            self._postconf("-M", f"{listen}/inet={listen} inet n - n - - smtpd")
            # master.cf values cannot hold spaces: name the setting in main.cf instead
            name = f"service_milters_{port}"
            value = f"{{ {milters}, default_action=accept }}" if milters else ""
            self._postconf("-e", f"{name}={value}")
            self._postconf("-P", f"{listen}/inet/smtpd_milters=${name}")

    def start(self) -> Postfix:
        self.configure()
        out = subprocess.run(["postfix", "-c", str(self.etc), "start"], capture_output=True,
                             text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"postfix start failed: {out.stdout}{out.stderr}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("postfix does not greet:\n" + self.log_text()[-3000:])

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True,
                       timeout=60)
        pid_file = self.dir / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def mailbox(self) -> str:
        """The delivered mail of `deliver_to` ('' before the first delivery)."""
        box = self.mail_dir / str(self.deliver_to)
        return box.read_text(errors="replace") if box.exists() else ""

    def log_text(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def __enter__(self) -> Postfix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Transcript:
    """Every command of one SMTP session with the reply it got."""

    replies: list[tuple[str, int, str]] = field(default_factory=list)
    closed: bool = False

    def code(self, command: str) -> int | None:
        for cmd, code, _ in self.replies:
            if cmd.split(" ", 1)[0].upper() == command.upper():
                return code
        return None

    @property
    def rcpt_codes(self) -> list[int]:
        return [code for cmd, code, _ in self.replies if cmd.upper().startswith("RCPT")]

    def text(self) -> str:
        return "\n".join(f"{cmd!r} -> {code} {text}" for cmd, code, text in self.replies)


class _Smtp:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.buf = b""

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        code = int(lines[-1][:3]) if lines[-1][:3].isdigit() else 0
        return code, " ".join(x[4:] for x in lines)

    def cmd(self, line: bytes) -> tuple[int, str]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()


def session(port: int, client_ip: str, *, helo: str | None = "client.example",
            mail_from: str | bytes = "sender@example.net",
            rcpts: list[str | bytes] = (), data: bool = True,  # type: ignore[assignment]
            client_name: str | None = None, host: str = "127.0.0.1",
            login: str | None = None, subject: str = "test") -> Transcript:
    """One SMTP session through Postfix as if it came from `client_ip` (XCLIENT); with
    `login`, as if that client had authenticated (XCLIENT LOGIN: {auth_authen} at MAIL);
    with `helo=None`, straight to MAIL after the greeting (Postfix does not require HELO)."""
    t = Transcript()
    smtp = _Smtp(host, port)

    def step(label: str, line: bytes) -> int:
        code, text = smtp.cmd(line)
        t.replies.append((label, code, text))
        if code == 421:
            t.closed = True
            raise ConnectionError("421")
        return code

    try:
        code, text = smtp.reply()
        t.replies.append(("<greeting>", code, text))
        step("EHLO", b"EHLO tester.localhost")
        addr = f"IPV6:{client_ip}" if ":" in client_ip else client_ip
        name = client_name or "[UNAVAILABLE]"
        # The XCLIENT reply is the new session's greeting: 220, or 554 when a milter
        # rejected the connection (Postfix then refuses the commands that follow).
        auth = f" LOGIN={login}" if login else ""
        code, text = smtp.cmd(f"XCLIENT ADDR={addr} NAME={name}{auth}".encode())
        t.replies.append(("XCLIENT", code, text))
        if code in (421, 0) or (code // 100 == 5 and "XCLIENT" in text):
            return t
        if helo is not None:
            step("EHLO", b"EHLO " + helo.encode())
        raw_from = mail_from if isinstance(mail_from, bytes) else mail_from.encode()
        if step("MAIL", b"MAIL FROM:<" + raw_from + b">") // 100 != 2:
            step("QUIT", b"QUIT")
            return t
        accepted = 0
        for rcpt in rcpts:
            raw = rcpt if isinstance(rcpt, bytes) else rcpt.encode()
            if step("RCPT " + raw.decode("utf-8", "replace"), b"RCPT TO:<" + raw + b">") < 300:
                accepted += 1
        if data and accepted and step("DATA", b"DATA") == 354:
            step("<message>", f"Subject: {subject}\r\n\r\nhello\r\n.".encode())
        step("QUIT", b"QUIT")
    except (ConnectionError, OSError):
        t.closed = True
    finally:
        smtp.sock.close()
    return t


def blocked(t: Transcript) -> bool:
    """Refused by crowdsec-milter: Postfix gave the milter's 550 at MAIL FROM."""
    return t.code("MAIL") == 550 and "blocked by CrowdSec" in t.text()


def delivered(t: Transcript) -> bool:
    """Sender, the one recipient and the message all accepted."""
    return t.code("MAIL") == 250 and t.rcpt_codes == [250] and t.code("<message>") == 250
