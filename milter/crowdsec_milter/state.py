"""The state file: the last good set of decisions on disk, so a restart during a LAPI
outage does not open the doors (CrowdSec's own firewall bouncer flushes its sets then).

Stream mode only: the puller writes it after pulls that changed something, at most every
`MIN_INTERVAL` seconds (more apart when a write takes long) and once more at stop; the
source loads it at start and enforces it until the first good pull replaces it.

The format, version 1: a JSON head, then arrays in the writer's byte order (the head
names it), then a trailer; the sizes are little-endian:

    "crowdsec-milter state\n"    22 bytes, the magic
    head length                   4 bytes
    head                          JSON: format, saved (unix time), clock, byteorder, metas
                                  ([type, scope, origin, scenario] by slot), buckets and
                                  decisions (IPv4 /32 counts), tables ([family, prefix
                                  length, count] each), scoped (Country, AS, account decisions,
                                  [id, type, scope, value, origin, scenario, expiry as
                                  unix time])
    IPv4 /32 decisions            bucket tops (2 bytes each), decisions per bucket (4),
                                  then the index's own buckets (index.py) end to end: in
                                  each, the low address halves (2 bytes a decision), then
                                  the (packed, id) pairs (16)
    every other table             network keys' high and low 64 bits, packed words, ids
                                  (8 bytes each, a decision each)
    length of all the above       8 bytes
    CRC-32 of all the above       4 bytes

Expiries are absolute: a packed word's expiry field holds tenths of a second on the
writer's monotonic clock, and `clock` is that clock's distance to unix time in tenths, so
field + clock is the expiry in unix tenths; a load moves every expiry onto its own clock in
one pass (a reboot resets the monotonic clock: nothing else would survive one). The file
holds nothing but decisions: no key, no URL.

Whatever is wrong with a file (missing, truncated, corrupt, another program's, another
machine's byte order) it is refused with one warning line and start-up goes on without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import stat
import struct
import sys
import time
import zlib
from array import array
from collections.abc import Callable
from typing import NamedTuple

from .decisions import ACCOUNT_SCOPE, Decision
from .index import DecisionIndex, Export, Restore

log = logging.getLogger("crowdsec_milter.state")

MAGIC = b"crowdsec-milter state\n"
FORMAT = 1
MIN_INTERVAL = 30.0  # seconds between writes at least
COST_SHARE = 20  # ... and at least this many times the last write's duration
SIZE_LIMIT = 1 << 30  # bytes: 50 times a 1M-decision file; more is no file of ours
_LEN = struct.Struct("<I")
_BUCKET = struct.Struct("<HI")
_TRAILER = struct.Struct("<QI")
_LOW = 2  # bytes of an address's low half in a bucket
_ENTRY = 18  # bytes a decision takes in a bucket: low half, packed word, id
_WORD = (1 << 64) - 1


class StateError(ValueError):
    """A state file that cannot be used; the message says why."""


class Loaded(NamedTuple):
    """A state file read back: the index to enforce, the Country and AS decisions, and
    what the log line tells."""

    index: DecisionIndex
    scoped: list[Decision]
    saved: float  # unix time of the write
    dropped: int  # decisions expired since


def clock_offset(wall: float, mono: float) -> int:
    """Tenths of a second from the monotonic clock to the unix clock, now."""
    return round((wall - mono) * 10.0)


def encode(index: DecisionIndex, scoped: list[Decision], wall: float,
           mono: float) -> list[bytes | memoryview]:
    """The file's bytes, in chunks: the IPv4 buckets are written as they are in memory (a
    million decisions are ~19 MB, never copied whole). Call from the index's writer."""
    clock = clock_offset(wall, mono)
    data: Export = index.export()
    tops = array("H", data.tops)
    sizes = array("I", [len(raw) // _ENTRY for raw in data.buckets])
    tables = []
    table_chunks: list[bytes | memoryview] = []
    for family, plen, keys, packs in data.tables:
        if max(packs) >> 128:  # ids past 64 bits: no LAPI makes them, the file skips them
            kept = [(k, p) for k, p in zip(keys, packs, strict=True) if not p >> 128]
            keys, packs = [k for k, _ in kept], [p for _, p in kept]
        tables.append([family, plen, len(keys)])
        for column in ([k >> 64 for k in keys], [k & _WORD for k in keys],
                       [p & _WORD for p in packs], [p >> 64 for p in packs]):
            table_chunks.append(array("Q", column).tobytes())
    head = {
        "format": FORMAT,
        "saved": wall,
        "clock": clock,
        "byteorder": sys.byteorder,
        "metas": data.metas,
        "buckets": len(tops),
        "decisions": sum(sizes),
        "tables": tables,
        "scoped": [[d.id, d.type, d.scope, d.value, d.origin, d.scenario,
                    d.expires + clock / 10.0] for d in scoped],
    }
    head_bytes = json.dumps(head, separators=(",", ":")).encode()
    chunks: list[bytes | memoryview] = [MAGIC, _LEN.pack(len(head_bytes)), head_bytes,
                                        tops.tobytes(), sizes.tobytes()]
    chunks.append(b"".join(data.buckets))  # one copy, in C: ~10 ms a million decisions
    chunks += table_chunks
    length = 0
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
        length += len(chunk)
    chunks.append(_TRAILER.pack(length, crc))
    return chunks


def _column(body: memoryview, pos: int, typecode: str, count: int) -> tuple[array, int]:
    """`count` items of an array at `pos`, and the position after them."""
    column = array(typecode)
    end = pos + column.itemsize * count
    if end > len(body):
        raise StateError("corrupt: the head promises more decisions than the file holds")
    column.frombytes(body[pos:end])
    return column, end


def _split(region: memoryview, sizes: array) -> tuple[bytes, array]:
    """Buckets end to end (low halves, then pairs, each) as all the low halves and all
    the pairs, each end to end: the expiries are then moved in one pass."""
    low_parts = []
    pair_parts = []
    pos = 0
    for n in sizes:
        cut = pos + _LOW * n
        end = pos + _ENTRY * n
        low_parts.append(region[pos:cut])
        pair_parts.append(region[cut:end])
        pos = end
    pairs = array("Q")
    pairs.frombytes(b"".join(pair_parts))
    return b"".join(low_parts), pairs


def decode(data: bytes, wall: float, mono: float) -> Loaded:
    """A state file's bytes back as an index to enforce (expired decisions dropped);
    StateError saying what is wrong otherwise."""
    if not data:
        raise StateError("empty")
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise StateError("truncated")
        raise StateError("not a crowdsec-milter state file")
    if len(data) < len(MAGIC) + _LEN.size + _TRAILER.size:
        raise StateError("truncated")
    length, crc = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    body = memoryview(data)[:len(data) - _TRAILER.size]
    if length != len(body):
        raise StateError(f"truncated or cut: {len(data)} bytes where the trailer says "
                         f"{length + _TRAILER.size}")
    if zlib.crc32(body) != crc:
        raise StateError("corrupt (checksum mismatch)")
    pos = len(MAGIC)
    (head_len,) = _LEN.unpack_from(body, pos)
    pos += _LEN.size
    try:
        head = json.loads(bytes(body[pos:pos + head_len]))
    except (ValueError, RecursionError) as exc:
        raise StateError(f"corrupt head: {exc}") from None
    pos += head_len
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        got = head.get("format") if isinstance(head, dict) else None
        raise StateError(f"format {got!r:.20}, this milter reads {FORMAT}")
    if head.get("byteorder") != sys.byteorder:
        raise StateError(f"written on a {head.get('byteorder')!r:.20}-endian machine")
    try:
        saved = float(head["saved"])
        clock = int(head["clock"])
        buckets, total = int(head["buckets"]), int(head["decisions"])
        metas = [tuple(str(v) for v in m) for m in head["metas"]]
        if any(len(m) != 4 for m in metas):
            raise ValueError("a decision kind is not [type, scope, origin, scenario]")
        shapes = [(int(f), int(p), int(n)) for f, p, n in head["tables"]]
        scoped_rows = [(int(i), str(t), str(s), str(v), str(o), str(c), float(e))
                       for i, t, s, v, o, c, e in head["scoped"]]
        if min(buckets, total, *(n for _, _, n in shapes)) < 0:
            raise ValueError("a negative count")
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"corrupt head: {exc}") from None
    tops, pos = _column(body, pos, "H", buckets)
    sizes, pos = _column(body, pos, "I", buckets)
    if pos + _ENTRY * total > len(body) or sum(sizes) != total:
        raise StateError("corrupt: the IPv4 buckets do not add up")
    lows, pairs = _split(body[pos:pos + _ENTRY * total], sizes)
    pos += _ENTRY * total
    tables = []
    for family, plen, count in shapes:
        high, pos = _column(body, pos, "Q", count)
        low, pos = _column(body, pos, "Q", count)
        packs, pos = _column(body, pos, "Q", count)
        ids, pos = _column(body, pos, "Q", count)
        keys = [h << 64 | k for h, k in zip(high, low, strict=True)] if family == 6 \
            else low.tolist()
        tables.append((family, plen, keys, packs, ids))
    if pos != len(body):
        raise StateError("corrupt: more bytes than the head accounts for")
    now_clock = clock_offset(wall, mono)
    try:
        index, dropped = DecisionIndex.restore(
            Restore(metas, (tops, sizes, lows, pairs), tables),  # type: ignore[arg-type]
            clock - now_clock, mono)
    except (ValueError, OverflowError) as exc:
        raise StateError(f"corrupt: {exc}") from None
    scoped = []
    for ident, dtype, scope, value, origin, scenario, expires in scoped_rows:
        if scope not in ("Country", "AS", ACCOUNT_SCOPE) or not math.isfinite(expires):
            raise StateError(f"corrupt: scoped decision {ident} on {scope!r:.20}")
        local = expires - now_clock / 10.0
        if local > mono:
            scoped.append(Decision(ident, dtype, scope, value, origin, scenario, local))
        else:
            dropped += 1
    return Loaded(index, scoped, saved, dropped)


def read(path: str, wall: float, mono: float) -> Loaded:
    """The state file at `path`, decoded; StateError saying why not. Opened without
    blocking and only if it is a regular file (a FIFO there must not hang start-up)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise StateError("no such file (none written yet)") from None
    except OSError as exc:
        raise StateError(exc.strerror or str(exc)) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > SIZE_LIMIT:
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateError("not a regular file")
        raise StateError(f"{info.st_size} bytes, more than a state file can be")
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(SIZE_LIMIT + 1)
        except OSError as exc:
            raise StateError(exc.strerror or str(exc)) from None
    return decode(data, wall, mono)


def write(path: str, chunks: list[bytes | memoryview]) -> int:
    """Replace the file at `path` atomically: a temporary file beside it (mode 0600),
    written, fsynced, renamed over it, the folder fsynced. Bytes written; OSError when
    not (the old file then stays as it was)."""
    tmp = f"{path}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a write that was cut short
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return sum(len(c) for c in chunks)


class StateFile:
    """The state file of one running milter: loaded once at start, written by the
    puller. `wall` and `clock` are the unix and monotonic clocks (tests pass their own)."""

    def __init__(self, path: str, *, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._wall = wall
        self._clock = clock
        self._last_write: float | None = None
        self._next_gap = MIN_INTERVAL
        self._failing = ""

    def load(self) -> Loaded | None:
        """The decisions saved, or None after one warning line saying why not."""
        started = time.perf_counter()
        try:
            loaded = read(self.path, self._wall(), self._clock())
        except StateError as exc:
            log.warning("state file %s refused (%s); starting without it: until the first "
                        "good pull clients get what --on-lapi-error says", self.path, exc)
            return None
        age = max(self._wall() - loaded.saved, 0.0)
        log.info("state file %s: %d decision(s) loaded in %.2f s, enforced until the first "
                 "good pull (written %.0f s ago; %d expired since, dropped)", self.path,
                 len(loaded.index) + len(loaded.scoped), time.perf_counter() - started, age,
                 loaded.dropped)
        return loaded

    def due(self) -> bool:
        """Whether a write now keeps to the bound: every MIN_INTERVAL seconds at most, and
        never more than 1/COST_SHARE of the time spent writing."""
        return self._last_write is None or self._clock() - self._last_write >= self._next_gap

    def save(self, index: DecisionIndex, scoped: list[Decision]) -> bool:
        """Write what `index` and `scoped` hold now (call from the one thread that changes
        them); False after a logged failure (the file on disk stays the last good one)."""
        started = time.perf_counter()
        try:
            size = write(self.path, encode(index, scoped, self._wall(), self._clock()))
        except OSError as exc:
            kind = exc.strerror or type(exc).__name__
            if kind != self._failing:
                log.error("state file %s: cannot write (%s); the last one written stays",
                          self.path, kind)
                self._failing = kind
            self._last_write = self._clock()
            return False
        took = time.perf_counter() - started
        self._last_write = self._clock()
        self._next_gap = max(MIN_INTERVAL, COST_SHARE * took)
        if self._failing:
            log.info("state file %s: written again", self.path)
            self._failing = ""
        log.debug("state file %s: %d decision(s), %d bytes written in %.3f s", self.path,
                  len(index) + len(scoped), size, took)
        return True

