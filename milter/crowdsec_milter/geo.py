"""Country and AS of a client address, for CrowdSec's Country and AS decisions.

Read from MaxMind DB files (GeoLite2-Country and GeoLite2-ASN, or any database of that
layout) with the `maxminddb` reader (its C extension), memory-mapped: the operating system
pages in what lookups touch. geoipupdate replaces a file by rename, so the milter keeps
reading the file it opened until restarted. Answers for recent addresses are kept in a
small LRU, since a client usually opens several sessions. Country and AS decisions held
in memory (stream mode) live in `ScopedDecisions`.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import maxminddb

from .decisions import ACCOUNT_SCOPE, Decision


class GeoError(Exception):
    """A database file that cannot be used; the message names it."""


def _open(path: str, option: str) -> Any:
    """The reader: maxminddb's C extension over mmap (MODE_MMAP_EXT, about 1 µs a lookup),
    or its pure-Python reader over mmap (MODE_MMAP, several times slower) where the
    extension is not built."""
    try:
        try:
            return maxminddb.open_database(path, maxminddb.MODE_MMAP_EXT)
        except ValueError as exc:
            if "extension" not in str(exc):
                raise
            return maxminddb.open_database(path, maxminddb.MODE_MMAP)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise GeoError(f"{option} {path}: not a readable MaxMind DB file "
                       f"({getattr(exc, 'strerror', None) or exc})") from exc


class Geo:
    """Country ISO code and AS number of an address, from the databases given."""

    def __init__(self, country_db: str | None, asn_db: str | None,
                 cache_size: int = 4096) -> None:
        self._country = _open(country_db, "--geoip-country-db") if country_db else None
        self._asn = _open(asn_db, "--geoip-asn-db") if asn_db else None
        self.locate = functools.lru_cache(maxsize=cache_size)(self._read)

    @property
    def scopes(self) -> tuple[str, ...]:
        """The decision scopes these databases let us match: country, as."""
        return tuple(s for s, db in (("country", self._country), ("as", self._asn)) if db)

    def _read(self, ip: str) -> tuple[str, str]:
        """(ISO country code, AS number as text) of `ip`; '' for what is not known."""
        country = asn = ""
        try:
            if self._country is not None:
                record = self._country.get(ip)
                if isinstance(record, dict):
                    place = record.get("country") or record.get("registered_country") or {}
                    code = place.get("iso_code") if isinstance(place, dict) else None
                    country = code.upper() if isinstance(code, str) else ""
            if self._asn is not None:
                record = self._asn.get(ip)
                if isinstance(record, dict):
                    number = record.get("autonomous_system_number")
                    asn = str(number) if isinstance(number, int) else ""
        except ValueError:  # not an address the reader takes
            return "", ""
        return country, asn

    def close(self) -> None:
        for reader in (self._country, self._asn):
            if reader is not None:
                reader.close()


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
