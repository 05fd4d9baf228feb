"""Country and AS of a client address, for CrowdSec's Country and AS decisions.

Read from MaxMind DB files (GeoLite2-Country and GeoLite2-ASN, or any database of that
layout) with the `maxminddb` reader (its C extension) over a memory map of a private copy:
the milter reads each file whole into a memory file of its own (memfd) and maps that. A
map of the operator's file itself dies with it: truncating it (`cp`, `curl -o` and
`gunzip >` all truncate first) made the next lookup SIGBUS the process, and an overwrite
in place fed the reader half-written data.

The files are watched: at most once a second a lookup stats them, and a file with a new
inode, size or modification time is loaded again once it has been still for a second
(`mv` of a complete file into place is the atomic way; geoipupdate does that). A file
that cannot be used then (truncated, half-written, another database type) is refused
with one log line and the copy loaded before is kept. A lookup the database cannot answer
gives None, never an exception: the caller keeps its Ip and Range verdicts and treats the
country and AS as unknown. Answers for recent addresses are kept in a small LRU, keyed by
the databases' generation. Country and AS decisions held in memory (stream mode) live in
`ScopedDecisions`.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import maxminddb

from .decisions import ACCOUNT_SCOPE, Decision

log = logging.getLogger("crowdsec_milter.geo")

COUNTRY, ASN = "country", "as"
OPTIONS = {COUNTRY: "--geoip-country-db", ASN: "--geoip-asn-db"}
# Words of `metadata().database_type` that tell a database's kind: GeoLite2-Country,
# GeoIP2-City, GeoIP2-Enterprise, DBIP-Country-Lite; GeoLite2-ASN, GeoIP2-ISP,
# DBIP-ASN-Lite (compat=GeoLite2-ASN).
_WORDS = {COUNTRY: ("country", "city", "enterprise"), ASN: ("asn", "isp")}
_NAMES = {COUNTRY: "a country database (GeoLite2-Country, GeoIP2-City...)",
          ASN: "an AS database (GeoLite2-ASN, GeoIP2-ISP...)"}
CHECK_EVERY = 1.0  # seconds between stats of the files
SETTLE = 1.0  # seconds a changed file must have been left alone before it is read


class GeoError(Exception):
    """A database file that cannot be used; the message names it."""


def kinds_of(database_type: str) -> set[str]:
    """The kinds (country, as) a database type names."""
    low = database_type.lower()
    return {kind for kind, words in _WORDS.items() if any(w in low for w in words)}


def type_problem(kind: str, database_type: str) -> str | None:
    """Why a database of this type cannot serve as `kind`, or None. A type naming neither
    kind passes (a database of the same layout under another name)."""
    kinds = kinds_of(database_type)
    if kinds and kind not in kinds:
        return f"a {database_type!r} database, not {_NAMES[kind]}"
    return None


Stamp = tuple[int, int, int, int]  # device, inode, size, modification time (ns)


def _stamp(st: os.stat_result) -> Stamp:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _reader(path: str) -> Any:
    """maxminddb's C extension over mmap (about 1 µs a lookup), or its pure-Python reader
    (several times slower) where the extension is not built."""
    try:
        return maxminddb.open_database(path, maxminddb.MODE_MMAP_EXT)
    except ValueError as exc:
        if "extension" not in str(exc):
            raise
        return maxminddb.open_database(path, maxminddb.MODE_MMAP)


def _private(data: bytes) -> Any:
    """A reader over a copy of `data` nobody else can change: a memfd (a temporary file
    where there is none), mapped through /proc/self/fd; read into memory without /proc."""
    holder: IO[bytes]
    try:
        holder = os.fdopen(os.memfd_create("crowdsec-milter-mmdb", os.MFD_CLOEXEC), "w+b")
    except (AttributeError, OSError):
        holder = tempfile.TemporaryFile()  # noqa: SIM115 (closed below; the map stays)
    with holder:
        holder.write(data)
        holder.flush()
        try:
            return _reader(f"/proc/self/fd/{holder.fileno()}")
        except FileNotFoundError:
            holder.seek(0)
            return maxminddb.open_database(holder, maxminddb.MODE_FD)


def load(path: str, kind: str) -> tuple[Any, Stamp]:
    """A private reader of the database at `path` and the stamp of the file it copies;
    GeoError (naming the option) when it cannot be used as `kind`."""
    where = f"{OPTIONS[kind]} {path}"
    try:
        with open(path, "rb") as fh:
            before = os.fstat(fh.fileno())
            data = fh.read(before.st_size + 1)
            after = os.fstat(fh.fileno())
        if _stamp(before) != _stamp(after) or len(data) != before.st_size:
            raise GeoError(f"{where}: changed while it was read")
        reader = _private(data)
    except (OSError, ValueError, RuntimeError) as exc:  # InvalidDatabaseError: RuntimeError
        raise GeoError(f"{where}: not a readable MaxMind DB file "
                       f"({getattr(exc, 'strerror', None) or exc})") from exc
    problem = type_problem(kind, str(reader.metadata().database_type))
    if problem:
        reader.close()
        raise GeoError(f"{where}: {problem}")
    return reader, _stamp(before)


class _Database:
    """One database file: the private reader in use, and the stamp of the file it came
    from, to notice a replacement."""

    def __init__(self, path: str, kind: str) -> None:
        self.path = path
        self.kind = kind
        self.reader, self.stamp = load(path, kind)
        self.refused: Stamp | None = None  # a replacement that failed; retried once changed
        self.unseen = False  # the file is gone or unreadable (logged once)

    def refresh(self, wall_now: float) -> bool:
        """Load the file again if it was replaced or changed and has been still for
        SETTLE seconds; True when a new copy is in use."""
        where = f"{OPTIONS[self.kind]} {self.path}"
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if not self.unseen:
                log.error("%s: %s; keeping the database loaded before", where,
                          exc.strerror or exc)
                self.unseen = True
            return False
        self.unseen = False
        stamp = _stamp(st)
        if stamp in (self.stamp, self.refused) or wall_now - st.st_mtime < SETTLE:
            return False
        try:
            reader, stamp = load(self.path, self.kind)
        except GeoError as exc:
            self.refused = stamp
            log.error("%s; keeping the database loaded before (write a new file beside it "
                      "and mv it into place)", exc)
            return False
        self.reader, self.stamp, self.refused = reader, stamp, None
        meta = reader.metadata()
        log.info("%s: changed file loaded (%s, built %s)", where, meta.database_type,
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(meta.build_epoch)))
        return True


class Geo:
    """Country ISO code and AS number of an address, from the databases given."""

    def __init__(self, country_db: str | None, asn_db: str | None,
                 cache_size: int = 4096, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._country = _Database(country_db, COUNTRY) if country_db else None
        self._asn = _Database(asn_db, ASN) if asn_db else None
        self._clock = clock
        self._wall = wall
        self._generation = 0  # moves on with each new copy: cached answers of old ones lapse
        self._next_check = clock() + CHECK_EVERY
        self._checking = threading.Lock()
        self._cached = functools.lru_cache(maxsize=cache_size)(self._read)
        self.failures = 0  # lookups a database could not answer
        self._logged_failure = -3600.0

    @property
    def scopes(self) -> tuple[str, ...]:
        """The decision scopes these databases let us match: country, as."""
        return tuple(s for s, db in ((COUNTRY, self._country), (ASN, self._asn)) if db)

    def locate(self, ip: str) -> tuple[str, str] | None:
        """(ISO country code, AS number as text) of `ip`, '' for what the databases do
        not know; None when a database could not be read (never an exception)."""
        now = self._clock()
        if now >= self._next_check:
            self._refresh(now)
        try:
            return self._cached(ip, self._generation)
        except Exception as exc:  # a database the reader cannot read: unknown, not fatal
            self.failures += 1
            if now - self._logged_failure >= 60.0:
                self._logged_failure = now
                log.error("GeoIP lookup failed (%s: %s): the country and AS of such clients "
                          "are unknown, --on-lapi-error answers for them; Ip and Range "
                          "decisions still apply (%d failure(s) so far)",
                          type(exc).__name__, exc, self.failures)
            return None

    def cache_clear(self) -> None:
        """Forget the cached answers (the benchmark's cold lookups)."""
        self._cached.cache_clear()

    def cache_info(self) -> Any:
        """The LRU's hits and misses (a miss reads the databases)."""
        return self._cached.cache_info()

    def _refresh(self, now: float) -> None:
        """Check the files for replacement (one thread at a time; the others go on with
        the copies they have)."""
        if not self._checking.acquire(blocking=False):
            return
        try:
            if now < self._next_check:
                return
            wall = self._wall()
            changed = [db.refresh(wall) for db in (self._country, self._asn) if db]
            if any(changed):
                self._generation += 1
        except Exception as exc:  # (out of memory copying it...) the session goes on
            log.error("GeoIP database check failed (%s: %s); keeping the databases loaded "
                      "before", type(exc).__name__, exc)
        finally:
            self._next_check = self._clock() + CHECK_EVERY
            self._checking.release()

    def _read(self, ip: str, _generation: int) -> tuple[str, str]:
        """(ISO country code, AS number as text) of `ip`; '' for what is not known."""
        country = asn = ""
        try:
            if self._country is not None:
                record = self._country.reader.get(ip)
                if isinstance(record, dict):
                    place = record.get("country") or record.get("registered_country") or {}
                    code = place.get("iso_code") if isinstance(place, dict) else None
                    country = code.upper() if isinstance(code, str) else ""
            if self._asn is not None:
                record = self._asn.reader.get(ip)
                if isinstance(record, dict):
                    number = record.get("autonomous_system_number")
                    asn = str(number) if isinstance(number, int) else ""
        except ValueError:  # not an address the reader takes (IPv6 in an IPv4 database)
            return "", ""
        return country, asn

    def close(self) -> None:
        for db in (self._country, self._asn):
            if db is not None:
                db.reader.close()


class ScopedDecisions:
    """Country, AS and account decisions by (scope, value), several per value, kept apart
    by id. Readers take no lock: each value's tuple is replaced whole."""

    def __init__(self) -> None:
        self._by: dict[tuple[str, str], tuple[Decision, ...]] = {}
        self.lock = threading.Lock()
        # decisions held per scope: a scope with none needs no database lookup at all
        self.held = {"Country": 0, "AS": 0, ACCOUNT_SCOPE: 0}

    def __len__(self) -> int:
        return sum(self.held.values())

    def _put(self, key: tuple[str, str], kept: tuple[Decision, ...]) -> None:
        self.held[key[0]] += len(kept) - len(self._by.get(key, ()))
        if kept:
            self._by[key] = kept
        else:
            self._by.pop(key, None)

    def add(self, decision: Decision) -> None:
        key = (decision.scope, decision.value)
        kept = tuple(d for d in self._by.get(key, ()) if d.id != decision.id)
        self._put(key, (*kept, decision))

    def remove(self, scope: str, value: str, ident: int) -> bool:
        key = (scope, value)
        old = self._by.get(key, ())
        kept = tuple(d for d in old if d.id != ident)
        self._put(key, kept)
        return len(kept) != len(old)

    def all(self) -> list[Decision]:
        return [d for held in list(self._by.values()) for d in held]

    def lookup(self, scope: str, value: str, now: float) -> list[Decision]:
        return [d for d in self._by.get((scope, value), ()) if d.expires > now]

    def expire(self, now: float) -> int:
        removed = 0
        for key, held in list(self._by.items()):
            kept = tuple(d for d in held if d.expires > now)
            if len(kept) != len(held):
                removed += len(held) - len(kept)
                self._put(key, kept)
        return removed
