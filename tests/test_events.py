"""Event lines: attacker text stays data, lines survive rotation, drops are counted."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pytest
from crowdsec_milter.events import FIELD_LIMIT, EventWriter, clean_text, format_event
from eventschema import read_events, sample, validate_line
from hypothesis import given
from hypothesis import strategies as st
from waiting import eventually


def eventually_fast(check, timeout: float = 5.0) -> bool:
    """The writer thread is quick: poll often."""
    return eventually(check, timeout, 0.02)


@given(st.dictionaries(st.sampled_from(["helo", "rcpt", "mail_from", "client_name", "event",
                                        "time", "client_ip"]),
                       st.text(), max_size=7))
def test_any_text_gives_one_json_line_with_our_structure(fields: dict[str, str]) -> None:
    fields = {**fields, "client_ip": "192.0.2.1"}
    line = format_event("rcpt_rejected", sample("rcpt_rejected") | fields, 0.0)
    assert line.endswith("\n") and line.count("\n") == 1
    assert line.splitlines() == [line[:-1]]  # one line for every line reader
    doc = validate_line(line)
    assert doc["event"] == "rcpt_rejected" and doc["client_ip"] == "192.0.2.1"
    assert doc["time"] == "1970-01-01T00:00:00.000000Z"
    assert set(doc) == {"time", "event", "v"} | set(sample("rcpt_rejected"))


def test_json_in_a_recipient_cannot_add_a_field() -> None:
    rcpt = '<x","client_ip":"6.6.6.6","y":"\r\n{"event":"rcpt_rejected"}@example.org>'
    line = format_event("rcpt_rejected", sample("rcpt_rejected", client_ip="192.0.2.1",
                                                rcpt=rcpt), 0.0)
    doc = validate_line(line)
    assert doc["client_ip"] == "192.0.2.1" and doc["rcpt"] == rcpt
    assert line.count("\n") == 1


def test_non_utf8_bytes_are_escaped_not_dropped() -> None:
    raw = b"caf\xe9\xff@example.org".decode("utf-8", "surrogateescape")
    assert clean_text(raw) == "caf\\xe9\\xff@example.org"
    assert clean_text(b"\xc3\x28x") == "\\xc3(x"


def test_long_values_are_cut_and_the_cut_is_marked() -> None:
    value = "é" * 1000  # 2000 UTF-8 bytes
    out = clean_text(value)
    assert out.startswith("é" * 256) and out.endswith("...[cut 1488 bytes]")
    assert len(out.split("...")[0].encode()) <= FIELD_LIMIT
    assert clean_text("x" * FIELD_LIMIT) == "x" * FIELD_LIMIT



def lines(path: Path) -> list[dict]:
    return read_events(path)


def rejected(n: int = 0) -> dict[str, str]:
    """A complete rcpt_rejected event, numbered in its queue_id."""
    return sample("rcpt_rejected", client_ip="192.0.2.1", queue_id=str(n))


def test_writer_follows_rotation_and_sigusr1_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    writer = EventWriter(str(path))
    writer.start()
    writer.emit("rcpt_rejected", **rejected(1))
    assert eventually_fast(lambda: len(lines(path)) == 1)
    os.rename(path, tmp_path / "events.log.1")  # logrotate without copytruncate
    writer.emit("rcpt_rejected", **rejected(2))
    assert eventually_fast(lambda: len(lines(path)) == 1)  # noticed by itself
    os.rename(path, tmp_path / "events.log.2")
    path.touch()  # logrotate's `create`
    writer.reopen()
    writer.emit("rcpt_rejected", **rejected(3))
    writer.stop()
    got = [int(e["queue_id"]) for f in ("events.log.1", "events.log.2", "events.log")
           for e in lines(tmp_path / f)]
    assert got == [1, 2, 3]
    assert writer.written == 3 and writer.dropped == 0


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    writer = EventWriter(str(tmp_path / "e.log"), maxsize=10)  # not started: nothing drains
    started = time.monotonic()
    for i in range(1000):
        writer.emit("rcpt_rejected", **rejected(i))
    assert time.monotonic() - started < 1.0
    assert writer.dropped == 990
    caplog.set_level(logging.WARNING)
    writer.start()
    writer.stop()
    assert writer.written == 10
    assert "990 line(s) dropped" in caplog.text


def test_unwritable_target_counts_drops_then_recovers(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    path = folder / "events.log"
    writer = EventWriter(str(path))
    writer.start()
    writer.emit("rcpt_rejected", **rejected())
    assert eventually_fast(lambda: writer.written == 1)
    path.unlink()
    folder.rmdir()
    folder.write_text("now a file, so the log cannot be created")  # open fails: ENOTDIR
    writer.emit("rcpt_rejected", **rejected())
    assert eventually_fast(lambda: writer.dropped == 1)
    folder.unlink()
    folder.mkdir()
    writer.emit("rcpt_rejected", **rejected())
    assert eventually_fast(lambda: writer.written == 2)
    writer.stop()
    assert len(lines(path)) == 1
    assert "cannot" in caplog.text


def test_disk_full_is_counted(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.fail("/dev/full is needed to simulate a full disk")
    writer = EventWriter("/dev/full")
    writer.start()
    for _ in range(3):
        writer.emit("rcpt_rejected", **rejected())
    assert eventually_fast(lambda: writer.dropped == 3)
    writer.stop()
    assert writer.written == 0


def syslog_pair(tmp_path: Path) -> tuple[socket.socket, EventWriter]:
    """A datagram socket standing in for /dev/log, and a running writer sending to it."""
    path = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    writer = EventWriter(f"syslog:{path}")
    writer.start()
    return server, writer


def test_syslog_target_sends_one_tagged_datagram_per_event(tmp_path: Path) -> None:
    server, writer = syslog_pair(tmp_path)
    writer.emit("rcpt_rejected", **sample("rcpt_rejected", client_ip="192.0.2.1",
                                              rcpt="<a\nb@example.org>"))
    writer.emit("rcpt_rejected", **sample("rcpt_rejected", client_ip="192.0.2.2"))
    got = [server.recv(4096).decode() for _ in range(2)]
    writer.stop()
    server.close()
    for datagram, ip in zip(got, ("192.0.2.1", "192.0.2.2"), strict=True):
        assert datagram.startswith("<14>crowdsec-milter: {")
        assert "\n" not in datagram
        assert validate_line(datagram.split(": ", 1)[1])["client_ip"] == ip


LONE = "\ud800"  # a lone surrogate: valid in a Python str (e.g. JSON "\ud800" from LAPI),
# encodable in no UTF


def test_lone_surrogate_to_a_file_is_escaped_and_later_lines_follow(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    writer = EventWriter(str(path))
    writer.start()
    writer.emit("client_blocked", **sample("client_blocked", client_ip="192.0.2.1",
                                           scenario=LONE))
    writer.emit("client_blocked", **sample("client_blocked", client_ip="192.0.2.2",
                                           scenario="ok"))
    assert eventually_fast(lambda: len(lines(path)) == 2)
    writer.stop()
    raw = path.read_bytes().decode("utf-8")  # strict: the file is valid UTF-8
    assert "\\ud800" in raw.splitlines()[0]
    assert [e["scenario"] for e in lines(path)] == [LONE, "ok"]  # JSON readers get it back
    assert writer.written == 2 and writer.dropped == 0


def test_lone_surrogate_to_stdout_is_escaped_and_later_lines_follow() -> None:
    import subprocess
    import sys

    first = sample("client_blocked", client_ip="192.0.2.1", scenario=LONE)
    second = sample("client_blocked", client_ip="192.0.2.2", scenario="ok")
    script = ("from crowdsec_milter.events import EventWriter\n"
              "w = EventWriter('-')\n"
              "w.start()\n"
              f"w.emit('client_blocked', **{first!r})\n"
              f"w.emit('client_blocked', **{second!r})\n"
              "w.stop()\n"
              "print('written', w.written, 'dropped', w.dropped)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30,
                            cwd="/", env=env)
    out = result.stdout.decode("utf-8").splitlines()  # strict: valid UTF-8
    assert result.returncode == 0, result.stderr
    assert len(out) == 3, result.stdout + result.stderr
    assert [validate_line(x)["scenario"] for x in out[:2]] == [LONE, "ok"]
    assert "\\ud800" in out[0] and out[2] == "written 2 dropped 0"


def test_lone_surrogate_to_syslog_is_escaped_and_later_lines_follow(tmp_path: Path) -> None:
    server, writer = syslog_pair(tmp_path)
    writer.emit("client_blocked", **sample("client_blocked", client_ip="192.0.2.1",
                                           scenario=LONE))
    writer.emit("client_blocked", **sample("client_blocked", client_ip="192.0.2.2",
                                           scenario="ok"))
    try:
        got = [server.recv(4096).decode("utf-8") for _ in range(2)]
    finally:
        writer.stop()
        server.close()
    assert "\\ud800" in got[0]
    assert [validate_line(x.split(": ", 1)[1])["scenario"] for x in got] == [LONE, "ok"]
    assert writer.written == 2 and writer.dropped == 0


def test_an_unexpected_sink_error_is_counted_reported_and_the_writer_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever a sink raises (here a bug's RuntimeError, once), the batch is counted as
    dropped, the drop is reported, and the next lines are written."""
    from crowdsec_milter.events import _Sink

    class FailsOnce(_Sink):
        failed = False

        def write(self, batch: list[str]) -> tuple[int, OSError | None]:
            if not self.failed:
                self.failed = True
                raise RuntimeError("a bug in a sink")
            return super().write(batch)

    path = tmp_path / "events.log"
    caplog.set_level(logging.INFO)
    writer = EventWriter(str(path), linger=0)
    writer._sink = FailsOnce(str(path))
    writer.start()
    writer.emit("rcpt_rejected", **rejected(1))
    assert eventually_fast(lambda: writer.dropped == 1)
    assert eventually_fast(lambda: "1 line(s) dropped" in caplog.text)  # reported while running
    assert "RuntimeError: a bug in a sink" in caplog.text
    writer.emit("rcpt_rejected", **rejected(2))
    assert eventually_fast(lambda: writer.written == 1)
    writer.stop()
    assert [e["queue_id"] for e in lines(path)] == ["2"]
