"""Event sinks that misbehave for real: a full filesystem (a 64 KiB tmpfs in a private
mount namespace), a FIFO nobody reads, a FIFO whose reader stalls, a NOTIFY_SOCKET nobody
reads. A line is written whole or not at all, the counters say what reached the sink, and
neither start nor stop waits on the sink."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from lapi_server import FakeLapi
from milter_process import MilterProcess, Mta, verdict
from waiting import eventually

HERE = Path(__file__).parent

# A stop that hangs on its sink is what these tests catch (before the fix: not done after
# 90 s). The milter gives the sink 1.5 s; the rest of this bound is scheduling slack on a
# loaded 2-core machine (4-5 s seen there), not a timing target.
HANG = 10.0


def test_a_full_disk_never_tears_a_line_and_the_counters_tell_the_truth(
        tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("needs root and unshare(1) to mount a small tmpfs privately")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {mnt} && "
              f"exec {sys.executable} {HERE / 'full_disk.py'} {mnt}")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["full"]["dropped"] > 0, got["full"]  # the disk did fill up
    assert got["written"] + got["dropped"] == got["emitted"]
    text = got["text"]
    assert text.endswith("\n")
    lines = text.splitlines()
    for line in lines:  # each one whole: no line ran into the next
        json.loads(line)
    assert len(lines) == got["written"], (len(lines), got["written"], got["dropped"])
    ids = [json.loads(line)["queue_id"] for line in lines]
    assert ids[-20:] == [f"{n:04d}" for n in range(300, 320)]  # written again once freed


def rcpts(mta: Mta, n: int) -> None:
    """`n` refused RCPTs in one session: `n` rcpt_rejected events."""
    mta.helo("client.example")
    mta.mail("<sender@example.net>")
    for i in range(n):
        mta.rcpt(f"<nosuchuser{i}@example.org>", {
            "{rcpt_mailer}": "error", "{rcpt_host}": "5.1.1",
            "{rcpt_addr}": "User unknown in local recipient table " + "x" * 200})


def test_a_fifo_event_log_without_reader_neither_blocks_start_nor_stop(
        tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.add("203.0.113.9")
    proc = MilterProcess(tmp_path, url, lapi.key)
    os.mkfifo(proc.events)
    try:
        proc.start()  # listens and pulls: open() did not wait for a reader
        assert verdict(proc, "203.0.113.9") == "reject"
        mta = Mta(proc.port)
        assert mta.connect("192.0.2.10")[0] == "continue"
        rcpts(mta, 5)
        mta.close()
        assert eventually(lambda: "dropped" in proc.log(), timeout=10), proc.log()
        assert proc.stop(signal.SIGTERM) < HANG, proc.log()
        assert proc.proc is not None and proc.proc.returncode == 0, proc.log()
        assert "FIFO" in proc.log() or "no reader" in proc.log(), proc.log()
    finally:
        proc.stop(signal.SIGKILL)


def test_a_stalled_fifo_reader_costs_lines_logged_as_dropped_never_the_stop(
        tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    proc = MilterProcess(tmp_path, url, lapi.key)
    os.mkfifo(proc.events)
    reader = os.open(proc.events, os.O_RDONLY | os.O_NONBLOCK)  # there, never reading
    try:
        proc.start()
        mta = Mta(proc.port)
        assert mta.connect("192.0.2.10")[0] == "continue"
        rcpts(mta, 600)  # far more than a 64 KiB pipe holds
        assert verdict(proc, "192.0.2.11") == "continue"  # still answering
        mta.close()
        assert eventually(lambda: "line(s) dropped" in proc.log(), timeout=15), proc.log()
        assert verdict(proc, "192.0.2.12") == "continue"
        took = proc.stop(signal.SIGTERM)
        assert took < HANG, f"SIGTERM to exit took {took:.2f}s: {proc.log()}"
        assert proc.proc is not None and proc.proc.returncode == 0, proc.log()
        # what the pipe got is whole lines only
        data = b""
        while chunk := os.read(reader, 65536):
            data += chunk
        assert data.endswith(b"\n") and data.count(b"\n") > 10
        for line in data.splitlines():
            json.loads(line)
    finally:
        os.close(reader)
        proc.stop(signal.SIGKILL)


def queue_full(path: str) -> bool:
    """True when the datagram socket at `path` takes no more (sendto would block)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as probe:
        try:
            probe.sendto(b"WATCHDOG=1", path)
        except BlockingIOError:
            return True
    return False


def test_a_notify_socket_nobody_reads_never_holds_up_start_or_stop(
        tmp_path: Path, fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    path = str(tmp_path / "notify")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)  # bound, never read: its queue fills and sendto would block
    proc = MilterProcess(tmp_path, url, lapi.key)
    try:
        # the watchdog pets every 1 ms: the queue is full within a second
        proc.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000"})
        assert eventually(lambda: queue_full(path), timeout=10)
        assert verdict(proc, "192.0.2.12") == "continue"
        took = proc.stop(signal.SIGTERM)  # STOPPING=1 finds the queue full
        assert took < HANG, f"SIGTERM to exit took {took:.2f}s: {proc.log()}"
        assert proc.proc is not None and proc.proc.returncode == 0, proc.log()
        assert "takes nothing" in proc.log(), proc.log()
    finally:
        sink.close()
        proc.stop(signal.SIGKILL)
