"""Structured events: one JSON object per line, for CrowdSec to read.

`format_event` is pure: attacker-chosen text (HELO, sender, recipient, reverse name) only
ever becomes a JSON string value, so it cannot start another line or add a field; bytes that
were not UTF-8 are written as `\\xNN`; long values are cut with the cut marked.

`EventWriter` hands lines to one background thread through a bounded queue, so a milter
callback never waits on a slow disk or syslog; a line that cannot be queued or written is
counted and the count reported in the operational log, never lost silently. What a sink
cannot encode (a lone surrogate from LAPI) is written as a JSON `\\uXXXX` escape, and any
unexpected error costs one batch of lines, counted as dropped, never the writer thread.
No sink can hold the milter up: opening never blocks (a FIFO without reader), a write waits
at most `WRITE_BOUND`, stop at most `STOP_BOUND`; a line is written whole or not at all.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import logging
import math
import os
import queue
import re
import select
import socket
import stat
import sys
import threading
import time
from typing import Any

log = logging.getLogger("crowdsec_milter.events")

FIELD_LIMIT = 512
# The line format's version, written in every line as "v" and pinned in
# conf/events.schema.json: raise it whenever a field of an event is added, removed, retyped
# or changes meaning.
EVENT_VERSION = 3
_LINE_BREAKS = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
_SURROGATE = re.compile("[\udc80-\udcff]")
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _byte_escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()) - 0xDC00:02x}"
JSON_ESCAPE = "crowdsec_milter.json_escape"


def _json_escape(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: what a sink cannot encode (a lone surrogate in UTF-8, anything
    past ASCII on an ASCII stdout) becomes JSON's own `\\uXXXX`. Lines only carry such
    characters inside JSON strings, so the line stays valid JSON and reads back the same."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for char in exc.object[exc.start:exc.end]:
        code = ord(char)
        if code > 0xFFFF:  # needs a UTF-16 surrogate pair in JSON
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out), exc.end


codecs.register_error(JSON_ESCAPE, _json_escape)


def clean_text(value: object, limit: int = FIELD_LIMIT) -> str:
    """A field value as safe text: non-UTF-8 bytes escaped, at most `limit` UTF-8 bytes."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    else:
        text = str(value)
        if text.isascii():  # nearly every value: no surrogates, one byte a character
            return text if len(text) <= limit else \
                f"{text[:limit]}...[cut {len(text) - limit} bytes]"
        # bytes that were not UTF-8, smuggled in by surrogateescape: written as \xNN
        if _SURROGATE.search(text):
            text = _SURROGATE.sub(_byte_escape, text)
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text
    cut = data[:limit].decode("utf-8", "ignore")
    return f"{cut}...[cut {len(data) - len(cut.encode())} bytes]"


_stamp: tuple[int, str] = (-1, "")


def rfc3339(timestamp: float) -> str:
    global _stamp
    seconds = int(timestamp // 1)
    micros = int((timestamp - seconds) * 1e6)
    cached, prefix = _stamp  # one tuple, read at once: safe across milter threads
    if cached != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))
        _stamp = (seconds, prefix)
    return f"{prefix}{micros:06d}Z"


def _typed(value: object) -> object:
    """A field value with its JSON type kept: true/false, a number, or safe text.

    One rule for a value that is missing or does not apply (None, NaN, infinity): the empty
    string, never null (conf/events.schema.json says so to consumers)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum as its number
    if isinstance(value, float):
        return value if math.isfinite(value) else ""
    return clean_text(value)


def format_event(event: str, fields: dict[str, Any], timestamp: float) -> str:
    """One event as one JSON line (with its newline): `time`, `event` and the format version
    `v` come first; values keep their JSON type (see conf/events.schema.json)."""
    record: dict[str, Any] = {"time": rfc3339(timestamp), "event": event, "v": EVENT_VERSION}
    for key, value in fields.items():
        if key in record:
            continue
        if value.__class__ is str and value.isascii() and len(value) <= FIELD_LIMIT:
            record[key] = value  # nearly every value: nothing to escape or cut
        else:
            record[key] = _typed(value)
    line = _ENCODE(record)
    # JSON leaves these raw, but many line readers (Python's splitlines among them) break
    # lines there: escape them so a line stays a line for every reader.
    if not line.isascii():
        for char, escaped in _LINE_BREAKS:
            if char in line:
                line = line.replace(char, escaped)
    return line + "\n"


WRITE_BOUND = 1.0  # seconds one batch may wait on a sink that takes nothing (a stalled FIFO)
STOP_BOUND = 1.5  # seconds stop waits for the writer, whatever the sink does


def _write_all(fd: int, data: bytes, deadline: float, chunk: int) -> tuple[int, OSError | None]:
    """Write `data` to `fd` in pieces of at most `chunk` bytes, waiting for room until
    `deadline` (monotonic); the bytes written and the error that stopped it, if any."""
    done = 0
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while done < len(data):
        wait = deadline - time.monotonic()
        if wait <= 0:
            return done, TimeoutError(errno.ETIMEDOUT, "the reader takes nothing")
        if not poller.poll(wait * 1000):
            continue  # recheck the deadline
        try:
            done += os.write(fd, data[done:done + chunk])
        except BlockingIOError:
            continue
        except OSError as exc:
            return done, exc
    return done, None


class _Sink:
    """Where lines go: a file (reopened after rotation), stdout, or the syslog socket.

    Every write is bounded (`WRITE_BOUND`) and reports how many lines reached the sink
    whole: a file is opened non-blocking (a FIFO without reader fails at once with ENXIO
    instead of hanging the start), a line cut short by a full disk is cut off again
    (truncated back to the last newline), and where that cannot be done (a pipe) the next
    line starts on a fresh line, so a torn line never runs into a good one."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._fd: int | None = None
        self._own_fd = False
        self._regular = False
        self._torn = False  # the sink's last line is unfinished: start the next one fresh
        self._inode: tuple[int, int] | None = None
        self._sock: socket.socket | None = None

    def open(self) -> None:
        self.close()
        if self.target == "-":
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            self._fd = sys.stdout.fileno()
        elif self.target == "syslog" or self.target.startswith("syslog:"):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.settimeout(WRITE_BOUND)  # a stalled syslog daemon costs lines only
            self._sock.connect(self.target.partition(":")[2] or "/dev/log")
        else:
            os.makedirs(os.path.dirname(os.path.abspath(self.target)), exist_ok=True)
            try:
                fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                             | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # open(2): a FIFO with no reader
                    raise OSError(exc.errno, "a FIFO with no reader (lines are dropped "
                                  "until one opens it)") from None
                raise
            st = os.fstat(fd)
            self._fd, self._own_fd = fd, True
            self._regular = stat.S_ISREG(st.st_mode)
            self._inode = (st.st_dev, st.st_ino)

    def rotated(self) -> bool:
        """True when the path now names another file, or none (logrotate moved ours)."""
        if self._inode is None:
            return False
        try:
            st = os.stat(self.target)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._inode

    def write(self, lines: list[str]) -> tuple[int, OSError | None]:
        """Write `lines`; how many reached the sink whole, and the error that stopped the
        rest (None when all went)."""
        deadline = time.monotonic() + WRITE_BOUND
        if self._sock is not None:
            sent = 0
            for line in lines:
                # <14> is facility user, severity info; the tag lets syslog route it.
                try:
                    self._sock.settimeout(max(0.0, deadline - time.monotonic()))
                    self._sock.send(b"<14>crowdsec-milter: "
                                    + line.rstrip("\n").encode("utf-8", JSON_ESCAPE))
                except OSError as exc:  # a timeout too: the bound holds for the batch
                    return sent, exc
                sent += 1
            return sent, None
        if self._fd is None:
            self.open()
        assert self._fd is not None
        if self._own_fd:
            encoding, chunk = "utf-8", 1 << 30
        else:  # stdout: a stream we did not open, with its own codec, maybe a blocking pipe
            encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
            chunk = select.PIPE_BUF  # never more than a ready pipe takes without blocking
        if self._torn:
            done, exc = _write_all(self._fd, b"\n", deadline, 1)
            if exc is not None:
                return 0, exc
            self._torn = False
        if not self._regular:
            # A pipe: one write per line, which a pipe takes whole or not at all (a line
            # up to PIPE_BUF bytes, nearly all of them), so a stalled reader tears none.
            for count, line in enumerate(lines):
                data = line.encode(encoding, JSON_ESCAPE)
                done, exc = _write_all(self._fd, data, deadline, chunk)
                if exc is not None:
                    self._torn = done > 0
                    return count, exc
            return len(lines), None
        data = "".join(lines).encode(encoding, JSON_ESCAPE)
        start = os.lseek(self._fd, 0, os.SEEK_END)
        done, exc = _write_all(self._fd, data, deadline, chunk)
        whole = data.rfind(b"\n", 0, done) + 1
        if done > whole:  # a line cut short (disk full): take it back
            try:
                os.ftruncate(self._fd, start + whole)
            except OSError:
                self._torn = True  # or end it where it stands
        return data.count(b"\n", 0, whole), exc

    def close(self) -> None:
        if self._fd is not None and self._own_fd:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None  # _torn stays: a pipe reopened still holds the torn line
        self._own_fd = False
        self._regular = False
        self._inode = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class EventWriter:
    """Queue events from milter threads; write them from one thread of its own."""

    def __init__(self, target: str, maxsize: int = 10_000, report_every: float = 60.0,
                 linger: float = 0.05) -> None:
        self.target = target
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=maxsize)
        self._sink = _Sink(target)
        self._reopen = threading.Event()
        self._wake = threading.Event()  # set by stop: no lingering then
        self._linger = linger
        self._report_every = report_every
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self._reported_dropped = 0
        self._last_report = 0.0
        self._last_error = ""

    def emit(self, event: str, **fields: Any) -> None:
        """Queue one event; never blocks. A full queue drops the line and counts it."""
        try:
            self._queue.put_nowait(format_event(event, fields, time.time()))
        except queue.Full:
            self.dropped += 1

    def reopen(self) -> None:
        """Ask the writer to reopen its file (SIGUSR1 after logrotate)."""
        self._reopen.set()

    def start(self) -> None:
        try:
            self._sink.open()
        except OSError as exc:
            log.error("event log %s cannot be opened yet: %s", self.target, exc)
        self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_BOUND) -> None:
        """Write what is queued, then stop; never waits longer than `timeout` in all, so a
        sink that takes nothing (a stalled FIFO reader) cannot hold up the milter's exit:
        lines still queued then are counted as dropped and reported."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        self._wake.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            left = self._queue.qsize()
            self.dropped += left
            log.warning("event log %s: the writer did not finish within %.1f s; %d queued "
                        "line(s) not written", self.target, timeout, left)
        else:
            self._sink.close()
        self._report(force=True)

    def _run(self) -> None:
        while True:
            try:
                line = self._queue.get(timeout=1.0)
            except queue.Empty:
                line = ""
            batch: list[str] = [line] if line else []
            stop = line is None
            if line and self._linger and self._queue.qsize() < 256:
                # Let a burst gather: one wake-up, stat and write for many lines instead of
                # a thread switch per line, which under load costs the milter threads CPU.
                self._wake.wait(self._linger)
            while not stop and len(batch) < 4096:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    batch.append(more)
            try:
                self._flush(batch)
            except Exception as exc:  # a bug must cost these lines, never the writer
                self.dropped += len(batch)
                self._note_error(f"lines lost to {type(exc).__name__}: {exc}")
                with contextlib.suppress(Exception):
                    self._sink.close()  # reopened on the next batch
            self._report()
            if stop:
                return

    def _flush(self, batch: list[str]) -> None:
        # One stat per batch: a line must not go to a file logrotate moved or deleted.
        if self._reopen.is_set() or self._sink.rotated():
            self._reopen.clear()
            self._try_open()
        if batch:
            self._write(batch)

    def _try_open(self) -> bool:
        try:
            self._sink.open()
            return True
        except OSError as exc:
            self._note_error(f"cannot open {self.target}: {exc}")
            return False

    def _write(self, batch: list[str]) -> None:
        try:
            written, exc = self._sink.write(batch)
        except OSError as error:  # the file could not be (re)opened
            written, exc = 0, error
        self.written += written
        if exc is not None:
            self.dropped += len(batch) - written
            reason = "disk full" if exc.errno == errno.ENOSPC else \
                f"no room within {WRITE_BOUND:g} s (the reader takes nothing)" \
                if isinstance(exc, TimeoutError) else str(exc)
            self._note_error(f"cannot write {self.target}: {reason}")
            self._sink.close()  # reopened on the next batch
            return
        if self._last_error:
            log.info("event log %s is writable again", self.target)
            self._last_error = ""

    def _note_error(self, message: str) -> None:
        if message != self._last_error:
            log.error("event log: %s", message)
            self._last_error = message

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.dropped == self._reported_dropped:
            return
        if force or now - self._last_report >= self._report_every:
            log.warning("event log: %d line(s) dropped so far (%d since last report)",
                        self.dropped, self.dropped - self._reported_dropped)
            self._reported_dropped = self.dropped
            self._last_report = now
