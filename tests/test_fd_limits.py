"""File descriptors: idle connections any local user can open to the milter's socket must
not starve real MTA sessions or the stream pull, under the limit the shipped unit sets."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lapi_server import FakeLapi
from milter_process import MilterProcess, Mta
from waiting import eventually

UNIT = Path(__file__).resolve().parent.parent / "conf" / "systemd" / "crowdsec-milter.service"


def answer(port: int, ip: str) -> str:
    """The verdict a fresh MTA session gets for `ip`, or 'no answer' (a connection the
    milter did not take in time, or closed)."""
    try:
        mta = Mta(port)
    except OSError:
        return "no answer"
    try:
        return mta.connect(ip)[0]
    except OSError:
        return "no answer"
    finally:
        mta.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no Max open files line")


def test_idle_connections_beyond_the_fd_limit_leave_mta_sessions_and_pulls_served(
        tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.add("203.0.113.70")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:  # this test holds 1,100 connections itself
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    proc = MilterProcess(tmp_path, url, lapi.key, "--update-frequency", "1",
                         "--log-level", "info")
    proc.start(nofile=(1024, 1024))  # a unit without LimitNOFILE: soft = hard = 1024
    assert proc.proc is not None
    pid = proc.proc.pid
    idle: list[socket.socket] = []
    try:
        assert answer(proc.port, "203.0.113.70") == "reject"
        for _ in range(1100):  # a local user's idle connections: connect, send nothing
            idle.append(socket.create_connection(("127.0.0.1", proc.port), timeout=5))
        # a real MTA session still gets its verdict, and the stream pull still works
        assert eventually(lambda: answer(proc.port, "203.0.113.70") == "reject",
                          timeout=20, step=0.5), proc.log()[-3000:]
        lapi.add("203.0.113.71")
        assert eventually(lambda: answer(proc.port, "203.0.113.71") == "reject",
                          timeout=20, step=0.5), proc.log()[-3000:]
        assert answer(proc.port, "192.0.2.71") == "continue"
        held = open_fds(pid)
        assert held < soft_limit(pid), (held, soft_limit(pid))
        assert "Too many open files" not in proc.log()
        assert "idle" in proc.log(), proc.log()[-3000:]  # said what it closed, and why
    finally:
        for s in idle:
            s.close()
        proc.stop(signal.SIGKILL)


def test_the_soft_limit_is_raised_to_the_hard_limit_at_start(
        tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    proc = MilterProcess(tmp_path, url, lapi.key).start(nofile=(1024, 4096))
    try:
        assert proc.proc is not None
        assert soft_limit(proc.proc.pid) == 4096
        assert "open files: 4096" in proc.log(), proc.log()
    finally:
        proc.stop(signal.SIGTERM)


def test_the_unit_sets_an_open_file_limit() -> None:
    lines = UNIT.read_text().splitlines()
    limits = [line.partition("=")[2] for line in lines if line.startswith("LimitNOFILE=")]
    assert limits and int(limits[0].partition(":")[0]) >= 65536, limits


HOLDER = """
import socket, sys
held = [socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
        for _ in range(int(sys.argv[2]))]
print("holding", len(held), flush=True)
sys.stdin.read()
"""


def as_nobody() -> None:
    os.setgid(65534)
    os.setuid(65534)


@contextlib.contextmanager
def holding(port: int, count: int, user: Callable[[], None] | None = None) -> Iterator[None]:
    """Another process (as `user` sets) holds `count` idle connections to `port`."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(port), str(count)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              preexec_fn=user, cwd="/")
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().startswith("holding")
        yield
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_one_local_users_idle_connections_go_before_the_mtas_idle_sessions(
        tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> None:
    """A client is the user owning the other end: another user's 1,100 connections are
    shed before Postfix's sessions, even when those have been idle longer."""
    lapi, url = fake_lapi
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    proc = MilterProcess(tmp_path, url, lapi.key, "--log-level", "info")
    proc.start(nofile=(1024, 1024))
    sessions = [Mta(proc.port) for _ in range(50)]  # the MTA's, waiting on slow clients
    time.sleep(1.5)  # idle longer than any of the other user's connections will be
    try:
        with holding(proc.port, 1100, as_nobody):
            assert eventually(lambda: "closed" in proc.log(), timeout=10), proc.log()[-2000:]
            assert answer(proc.port, "192.0.2.80") == "continue"
            # every one of the MTA's sessions is still served
            assert [m.connect(f"192.0.2.{i}")[0] for i, m in enumerate(sessions)] == \
                ["continue"] * 50
        assert "held by uid 65534" in proc.log(), proc.log()[-2000:]
    finally:
        for m in sessions:
            m.close()
        proc.stop(signal.SIGKILL)


def closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_a_connection_silent_from_its_start_is_closed_a_quiet_session_is_not(
        tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    proc = MilterProcess(tmp_path, url, lapi.key).start()
    silent = [socket.create_connection(("127.0.0.1", proc.port)) for _ in range(5)]
    session = Mta(proc.port)  # negotiated, then as quiet as the silent ones
    try:
        assert eventually(lambda: all(closed_by_peer(s) for s in silent), timeout=30)
        assert session.connect("192.0.2.90")[0] == "continue"
    finally:
        for s in silent:
            s.close()
        session.close()
        proc.stop(signal.SIGTERM)


def unit_nofile() -> int:
    for line in UNIT.read_text().splitlines():
        if line.startswith("LimitNOFILE="):
            return int(line.partition("=")[2].partition(":")[0])
    raise AssertionError("the unit sets no LimitNOFILE")


def test_2000_sessions_and_1100_idle_connections_under_the_units_limit(
        tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> None:
    """The README's 2,000 sessions at once, while another user holds 1,100 connections
    idle, with the open files the unit allows (or this machine's hard limit if lower:
    a container may not raise it)."""
    lapi, url = fake_lapi
    lapi.add("203.0.113.80")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2000 + 1100 + 200  # this test's own connections and the milter's
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = min(unit_nofile(), hard if hard != resource.RLIM_INFINITY else unit_nofile())
    assert limit >= need, f"the unit's or this machine's limit ({limit}) is below {need}"
    proc = MilterProcess(tmp_path, url, lapi.key, "--log-level", "info")
    proc.start(nofile=(limit, limit))
    conns: list[Mta] = []
    try:
        with holding(proc.port, 1100):
            conns = [Mta(proc.port) for _ in range(2000)]
            answers = [m.connect("203.0.113.80" if i % 2 else "192.0.2.2")[0]
                       for i, m in enumerate(conns)]
        assert answers.count("reject") == 1000 and answers.count("continue") == 1000
    finally:
        for m in conns:
            m.close()
        proc.stop(signal.SIGKILL)
