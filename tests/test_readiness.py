"""systemd readiness of the real milter program: a NOTIFY_SOCKET of the test's own, and
the tests' LAPI server holding back the first stream answer. READY=1 must wait for it
(a Type=notify unit starts Postfix only then), STATUS follows the pulls, STOPPING=1 on
SIGTERM, WATCHDOG=1 while libmilter and the puller run."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lapi_server import FakeLapi, Fault, serve
from milter_process import MilterProcess


class NotifySocket:
    """The datagram socket systemd would listen on; keeps every message it got."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        """Messages that arrived so far, without waiting."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        return self.messages

    def wait_for(self, field: str, timeout: float = 15.0) -> str:
        """The first message holding the line `field` (or starting with it, for
        'STATUS='), waiting for it to come."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if any(line == field or (field.endswith("=") and line.startswith(field))
                       for line in message.split("\n")):
                    return message
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {field!r} in {self.messages}")
            self.sock.setblocking(True)
            self.sock.settimeout(left)
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


@pytest.fixture
def lapi() -> Iterator[tuple[FakeLapi, str]]:
    fake = FakeLapi()
    server, url = serve(fake)
    yield fake, url
    fake._stopping.set()
    server.shutdown()


def test_ready_only_once_the_first_pull_is_applied(tmp_path: Path, notify: NotifySocket,
                                                   lapi: tuple[FakeLapi, str]) -> None:
    fake, url = lapi
    fake.add("192.0.2.10")
    hold = threading.Event()
    fake.fault = Fault(hold=hold, count=1)
    milter = MilterProcess(tmp_path, url, fake.key, "--update-frequency", "0.3")
    milter.start(wait_ready=None, env={"NOTIFY_SOCKET": str(notify.path),
                                       "WATCHDOG_USEC": "400000"})
    try:
        # libmilter listens (start() connected) and the first pull is in LAPI's hands
        deadline = time.monotonic() + 10
        while fake.count("/v1/decisions/stream") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.count("/v1/decisions/stream") == 1
        assert not any("READY=1" in m for m in notify.drain()), notify.messages
        hold.set()
        ready = notify.wait_for("READY=1")
        assert "STATUS=1 decision(s) held" in ready.split("\n")
        fake.add("192.0.2.11")
        notify.wait_for("STATUS=2 decision(s) held")
        notify.wait_for("WATCHDOG=1")
        assert sum("READY=1" in m for m in notify.messages) == 1
        milter.stop()
        notify.wait_for("STOPPING=1", timeout=1)
    finally:
        if milter.proc is not None and milter.proc.poll() is None:
            milter.stop()


def test_live_mode_is_ready_at_once(tmp_path: Path, notify: NotifySocket,
                                    lapi: tuple[FakeLapi, str]) -> None:
    fake, url = lapi
    milter = MilterProcess(tmp_path, url, fake.key, "--mode", "live")
    milter.start(wait_ready=None, env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        ready = notify.wait_for("READY=1")
        assert "STATUS=live mode: asking LAPI per client address" in ready.split("\n")
        assert fake.count("/v1/decisions/stream") == 0
    finally:
        milter.stop()
    notify.wait_for("STOPPING=1", timeout=1)


def test_a_failed_first_pull_still_says_ready_and_why(tmp_path: Path, notify: NotifySocket,
                                                      lapi: tuple[FakeLapi, str]) -> None:
    """LAPI down at start: READY (the milter serves as --on-lapi-error says) with a STATUS
    naming the outage, instead of holding Postfix's start as long as LAPI is down."""
    fake, url = lapi
    fake.fault = Fault(status=500)
    milter = MilterProcess(tmp_path, url, fake.key, "--update-frequency", "0.3",
                           "--on-lapi-error", "tempfail")
    milter.start(wait_ready=None, env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        ready = notify.wait_for("READY=1")
        assert ("STATUS=LAPI unavailable, 0 decision(s) held; clients get --on-lapi-error "
                "tempfail") in ready.split("\n")
        fake.fault = None
        notify.wait_for("STATUS=0 decision(s) held")
    finally:
        milter.stop()
