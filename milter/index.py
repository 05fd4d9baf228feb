"""The in-memory decision index: which decisions cover a client address.

Pure: no I/O, no clock of its own (callers pass `now`). Addresses are integers, never
strings, so a ban on 1.2.3.4 cannot touch 11.2.3.45. Each prefix length present gets a dict
from network number to the decisions on it, so a lookup is one dict probe per prefix length
in use (usually just /32 or /128 plus a few range lengths).

Writers (the stream puller) are serialised by the caller or by `lock`; readers take no
lock: every structure a reader walks is replaced, never mutated in a way a reader can see
half-done.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable

from .decisions import Decision, Network

_V4_MAPPED = 0xFFFF << 32

Entry = Decision | tuple[Decision, ...]


def address_key(text: str) -> tuple[int, int] | None:
    """(family, integer) for a client address string, or None when it is no IP address.

    Accepts what MTAs hand over: `1.2.3.4`, `2001:db8::1`, `[::1]`, `IPv6:2001:db8::1`,
    `fe80::1%eth0` (scope dropped); IPv4-mapped IPv6 becomes IPv4.
    """
    if not text:
        return None
    if text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    if ":" not in text:
        try:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        except (OSError, ValueError):
            return None
    text = text.split("%", 1)[0]
    try:
        number = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        return None
    if number >> 32 == 0xFFFF:
        return 4, number & 0xFFFFFFFF
    return 6, number


def _key(net: Network) -> int:
    return net.number >> ((32 if net.family == 4 else 128) - net.prefixlen)


def _entries(entry: Entry) -> tuple[Decision, ...]:
    return entry if isinstance(entry, tuple) else (entry,)


class DecisionIndex:
    """Decisions by network, with several decisions per network kept apart by id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # family -> prefixlen -> network number -> Decision or tuple of Decisions
        self._tables: dict[int, dict[int, dict[int, Entry]]] = {4: {}, 6: {}}
        # family -> tuple of (shift, table), longest prefix first; rebuilt when lengths change
        self._probes: dict[int, tuple[tuple[int, dict[int, Entry]], ...]] = {4: (), 6: ()}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _rebuild_probes(self, family: int) -> None:
        bits = 32 if family == 4 else 128
        tables = self._tables[family]
        self._probes[family] = tuple(
            (bits - plen, tables[plen]) for plen in sorted(tables, reverse=True) if tables[plen]
        )

    def add(self, decision: Decision, net: Network) -> None:
        """Hold one more decision; a decision with an id already held there replaces it."""
        tables = self._tables[net.family]
        table = tables.get(net.prefixlen)
        if table is None:
            table = tables[net.prefixlen] = {}
            new_length = True
        else:
            new_length = False
        key = _key(net)
        old = table.get(key)
        if old is None:
            table[key] = decision
            self._count += 1
        else:
            kept = tuple(d for d in _entries(old) if d.id != decision.id)
            self._count += 1 - (len(_entries(old)) - len(kept))
            table[key] = (*kept, decision) if kept else decision
        if new_length or (old is None and len(table) == 1):
            self._rebuild_probes(net.family)

    def remove(self, ident: int, net: Network) -> bool:
        """Drop the decision with this id on this network; the others there stay."""
        table = self._tables[net.family].get(net.prefixlen)
        if not table:
            return False
        key = _key(net)
        old = table.get(key)
        if old is None:
            return False
        kept = tuple(d for d in _entries(old) if d.id != ident)
        if len(kept) == len(_entries(old)):
            return False
        self._count -= 1
        if not kept:
            del table[key]
            if not table:
                self._rebuild_probes(net.family)
        else:
            table[key] = kept if len(kept) > 1 else kept[0]
        return True

    def lookup(self, family: int, number: int, now: float) -> list[Decision]:
        """Unexpired decisions covering the address, most severe first, longest-lived first."""
        found: list[Decision] = []
        for shift, table in self._probes[family]:
            entry = table.get(number >> shift)
            if entry is None:
                continue
            if isinstance(entry, tuple):
                found.extend(d for d in entry if d.expires > now)
            elif entry.expires > now:
                found.append(entry)
        if len(found) > 1:
            found.sort(key=lambda d: (d.severity, -d.expires))
        return found

    def expire(self, now: float) -> int:
        """Forget decisions past their own expiry, whether or not LAPI said so."""
        removed = 0
        for family, tables in self._tables.items():
            for table in tables.values():
                stale = [
                    number
                    for number, entry in table.items()
                    if any(d.expires <= now for d in _entries(entry))
                ]
                for number in stale:
                    kept = tuple(d for d in _entries(table[number]) if d.expires > now)
                    removed += len(_entries(table[number])) - len(kept)
                    if kept:
                        table[number] = kept if len(kept) > 1 else kept[0]
                    else:
                        del table[number]
            self._rebuild_probes(family)
        self._count -= removed
        return removed

    def counts(self) -> dict[tuple[str, int], int]:
        """Decisions held by (scope, family), for metrics and the status line."""
        result: dict[tuple[str, int], int] = {}
        for family, tables in self._tables.items():
            full = 32 if family == 4 else 128
            for plen, table in tables.items():
                scope = "Ip" if plen == full else "Range"
                n = sum(len(_entries(e)) for e in table.values())
                if n:
                    result[(scope, family)] = result.get((scope, family), 0) + n
        return result

    def decisions(self) -> Iterable[Decision]:
        """Every decision held (expired ones included until the next `expire`)."""
        for tables in self._tables.values():
            for table in tables.values():
                for entry in table.values():
                    yield from _entries(entry)
