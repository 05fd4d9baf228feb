"""sd_notify through a datagram socket of the test's own, as systemd would hold it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from crowdsec_milter.notify import Notifier


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_once_then_status_only(systemd: socket.socket) -> None:
    n = Notifier({"NOTIFY_SOCKET": systemd.getsockname()})
    n.ready("100 decisions")
    assert received(systemd) == ["READY=1", "STATUS=100 decisions"]
    n.ready("101 decisions")
    assert received(systemd) == ["STATUS=101 decisions"]
    n.stopping()
    assert received(systemd) == ["STOPPING=1", "STATUS=stopping"]
    n.close()


def test_status_text_cannot_add_a_field(systemd: socket.socket) -> None:
    n = Notifier({"NOTIFY_SOCKET": systemd.getsockname()})
    n.ready("x\nREADY=0")
    assert received(systemd) == ["READY=1", "STATUS=x READY=0"]
    n.close()


def test_abstract_socket_name() -> None:
    name = f"crowdsec-milter-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.send("READY=1")
        assert received(sock) == ["READY=1"]
        n.close()


def test_no_socket_is_a_quiet_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.send("READY=1")
    n.ready("x")
    n.stopping()
    n.close()


def test_watchdog_only_while_alive(systemd: socket.socket) -> None:
    alive = [True]
    n = Notifier({"NOTIFY_SOCKET": systemd.getsockname(), "WATCHDOG_USEC": "200000"})
    assert n.watchdog_interval == pytest.approx(0.2)
    n.start_watchdog(lambda: alive[0])
    assert received(systemd) == ["WATCHDOG=1"]
    alive[0] = False
    # At most one datagram already on its way; then silence for five half-intervals.
    systemd.settimeout(0.5)
    late = 0
    try:
        for late in range(1, 3):  # noqa: B007
            received(systemd)
    except TimeoutError:
        pass
    else:
        pytest.fail("the watchdog was still petted after alive() turned false")
    n.close()


@pytest.mark.parametrize(("env", "seconds"), [
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "junk"}, 0.0),
    ({"WATCHDOG_USEC": "-5"}, 0.0),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, 0.0),
    ({}, 0.0),
])
def test_watchdog_interval(env: dict[str, str], seconds: float) -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent", **env}
    assert Notifier(env).watchdog_interval == seconds
