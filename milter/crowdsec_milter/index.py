"""The in-memory decision index: which decisions cover a client address.

Pure: no I/O, no clock of its own (callers pass `now`). Addresses are integers, never
strings, so a ban on 1.2.3.4 cannot touch 11.2.3.45. Each prefix length present gets a dict
from network number to the decisions on it, so a lookup is one dict probe per prefix length
in use (usually just /32 or /128 plus a few range lengths).

Writers (the stream puller) are serialised by the caller or by `lock`; readers take no
lock: every structure a reader walks is replaced whole (a bucket, a probe tuple, a /16's
probe list) or changed one key at a time, so a reader sees each decision either there or
not, never a structure emptied for a rebuild. The counts for metrics are kept up to date by
the writers, so reading them never walks the index.

A decision is held as one int, not an object with seven fields (1M decisions stay near
100 MB); the few distinct (type, scope, origin, scenario) tuples are stored once, in
`_metas`, and named by their slot:

    bit  127 ........... 64 63 ................... 20 19 ............ 0
         |  LAPI id        |  expiry                |  meta slot      |
                             tenths of a second on     index into _metas
                             the monotonic clock,
                             rounded up

IPv4 /32 decisions, the bulk of every blocklist, skip the int objects: they sit in 65,536
buckets by the address's top 16 bits (`_V4Buckets`). A bucket of n decisions, as readers
see it, is one bytes object (about 18 bytes a decision):

    | low[0] | ... | low[n-1] | pack[0] id[0] | ... | pack[n-1] id[n-1] |
      2 bytes each, native      8 + 8 bytes each: the low 64 bits above, then the id
      order: the address's
      low 16 bits

A lookup finds the low half with bytes.find, then reads the pair at the same position.
"""

from __future__ import annotations

import math
import socket
import struct
import sys
import threading
from array import array
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise, repeat
from typing import NamedTuple

from .decisions import Decision, Network, network_text

_ntoa = socket.inet_ntoa


def _key(net: Network) -> int:
    return net.number >> ((32 if net.family == 4 else 128) - net.prefixlen)


# The packed int (see the module docstring): id << 64 | expiry tenths << 20 | meta slot.
_META_BITS = 20
_META_MASK = (1 << _META_BITS) - 1
_EXP_MASK = (1 << 44) - 1
_LOW_MASK = (1 << 64) - 1  # expiry and meta slot, without the id
_ID_LIMIT = 1 << 64  # ids that fit an unsigned 64-bit array slot
_EXP_LIMIT = _EXP_MASK / 10.0


def _positions(values: array, value: int) -> list[int]:
    """Indexes of `value` in a small array, found by C-level scans."""
    found = []
    i = -1
    for _ in range(values.count(value)):
        i = values.index(value, i + 1)
        found.append(i)
    return found


Packed = int
Entry = int | tuple[int, ...]

# An IPv4 /32 bucket (see the module docstring). Frozen, once readers can see the index,
# it is one bytes object: one object with its data inline keeps a hit to a few cache
# misses. While an index is built privately a bucket is (bytearray of lows, array "Q" of
# pairs), grown in place.
Bucket = bytes | tuple[bytearray, array]
_LOW_SIZE = 2  # bytes: the address's low 16 bits
_PAIR_SIZE = 16  # bytes: (pack, id), two unsigned 64-bit words
_LOWS_PART = (_LOW_SIZE + _PAIR_SIZE) // _LOW_SIZE  # 9: a bucket's lows end at len // 9
_PAIR_SHIFT = 3  # a low's byte offset << 3 is its pair's offset (_PAIR_SIZE // _LOW_SIZE)
assert _PAIR_SIZE // _LOW_SIZE == 1 << _PAIR_SHIFT
_ORDER = sys.byteorder
_PAIR = struct.Struct("=QQ").unpack_from
_new = tuple.__new__  # builds a Decision without NamedTuple's Python-level __new__


def _rows(bucket: Bucket) -> tuple[array, array]:
    """A bucket as arrays (lows, pairs) to edit; copies, except a private bucket's pairs."""
    lows = array("H")
    if bucket.__class__ is not bytes:
        lows.frombytes(bucket[0])  # type: ignore[arg-type]
        return lows, bucket[1]  # type: ignore[return-value]
    end = len(bucket) // _LOWS_PART
    pairs = array("Q")
    lows.frombytes(bucket[:end])  # type: ignore[index]
    pairs.frombytes(bucket[end:])  # type: ignore[index]
    return lows, pairs


def _frozen(lows: array | bytearray, pairs: array) -> bytes:
    return bytes(lows) + pairs.tobytes()


def _bucket_packs(bucket: Bucket) -> Iterable[int]:
    """The packed expiry+meta words of a bucket, without copying it."""
    if bucket.__class__ is bytes:
        return memoryview(bucket)[len(bucket) // _LOWS_PART:].cast("Q")[::2]  # type: ignore[arg-type]
    return bucket[1][::2]  # type: ignore[index]


def _packs(entry: Entry) -> tuple[int, ...]:
    return entry if isinstance(entry, tuple) else (entry,)


def _expiry(packed: int) -> float:
    return ((packed >> _META_BITS) & _EXP_MASK) / 10.0


class _V4Buckets:
    """IPv4 /32 decisions in 65,536 buckets by the address's top 16 bits (see Bucket):
    about 18 bytes a decision instead of ~130 for a dict entry with its int objects.

    While private (a fresh index nobody reads yet) buckets grow in place; once published,
    every change replaces a bucket whole, so a reader sees the old bucket or the new one.
    `held` is the index's count of decisions per meta slot, kept as decisions come and go.
    """

    def __init__(self, held: list[int], private: bool) -> None:
        self.slots: list[Bucket | None] = [None] * 65536
        self._held = held
        self._private = private

    def publish(self) -> None:
        """Freeze the buckets grown in place; from now on changes replace them whole."""
        slots = self.slots
        for top, bucket in enumerate(slots):
            if bucket is not None and bucket.__class__ is not bytes:
                slots[top] = _frozen(*bucket)  # type: ignore[misc]
        self._private = False

    def add(self, number: int, ident: int, low_pack: int) -> int:
        """Hold decision `ident` at an IPv4 address (replacing one with that id there);
        the change in the number held, 1 or 0."""
        bucket = self.slots[number >> 16]
        if self._private and bucket.__class__ is tuple:
            lows, pairs = bucket  # type: ignore[misc]
            pattern = (number & 0xFFFF).to_bytes(_LOW_SIZE, _ORDER)
            if lows.find(pattern) < 0:  # a new address: nothing to replace, append in place
                lows += pattern
                pairs.append(low_pack)
                pairs.append(ident)
                self._held[low_pack & _META_MASK] += 1
                return 1
        lows, pairs, gone = self._without(number, ident)
        lows.append(number & 0xFFFF)
        pairs.append(low_pack)
        pairs.append(ident)
        self._held[low_pack & _META_MASK] += 1
        self._store(number >> 16, lows, pairs)
        return 1 - gone

    def drop(self, number: int, ident: int) -> int:
        """Forget decision `ident` at an IPv4 address; how many went (0 or 1)."""
        if self.slots[number >> 16] is None:
            return 0
        lows, pairs, gone = self._without(number, ident)
        if gone:
            self._store(number >> 16, lows, pairs)
        return gone

    def _without(self, number: int, ident: int) -> tuple[array, array, int]:
        """The bucket of `number` as arrays to edit (copies of a frozen bucket: readers
        keep theirs), without decision `ident` at `number`; and how many entries that took
        out."""
        bucket = self.slots[number >> 16]
        if bucket is None:
            return array("H"), array("Q"), 0
        lows, pairs = _rows(bucket)
        gone = [i for i in _positions(lows, number & 0xFFFF) if pairs[2 * i + 1] == ident]
        for i in reversed(gone):
            self._held[pairs[2 * i] & _META_MASK] -= 1
            del lows[i], pairs[2 * i:2 * i + 2]
        return lows, pairs, len(gone)

    def _store(self, top: int, lows: array, pairs: array) -> None:
        """Put a bucket back: frozen once published, growable before."""
        if not lows:
            self.slots[top] = None
        elif self._private:
            self.slots[top] = (bytearray(lows.tobytes()), pairs)
        else:
            self.slots[top] = _frozen(lows, pairs)

    def expire(self, now: float) -> int:
        """Forget decisions expired at `now`; how many went."""
        removed = 0
        limit = int(now * 10.0) << _META_BITS | _META_MASK  # no pack above it has expired
        held = self._held
        for top, bucket in enumerate(self.slots):
            if bucket is None or min(_bucket_packs(bucket)) > limit:
                continue
            lows, pairs = _rows(bucket)
            keep = []
            for i in range(len(lows)):
                if pairs[2 * i] > limit and _expiry(pairs[2 * i]) > now:
                    keep.append(i)
                else:
                    held[pairs[2 * i] & _META_MASK] -= 1
            removed += len(lows) - len(keep)
            self._store(top, array("H", [lows[i] for i in keep]),
                        array("Q", [v for i in keep for v in (pairs[2 * i], pairs[2 * i + 1])]))
        return removed

    def entries(self) -> Iterable[tuple[int, int]]:
        """(address, packed decision) for every decision held."""
        for top, bucket in enumerate(self.slots):
            if bucket is not None:
                lows, pairs = _rows(bucket)
                for i, low in enumerate(lows):
                    yield top << 16 | low, pairs[2 * i + 1] << 64 | pairs[2 * i]


class DecisionIndex:
    """Decisions by network, with several decisions per network kept apart by id."""

    def __init__(self, *, private: bool = False) -> None:
        """A published index, or with private=True one built before anybody reads it
        (faster to fill: see `publish`)."""
        self.lock = threading.Lock()
        # family -> prefixlen -> network number >> (bits - prefixlen) -> packed decision(s)
        self._tables: dict[int, dict[int, dict[int, Entry]]] = {4: {}, 6: {}}
        # family -> tuple of (shift, prefixlen, table), longest prefix first
        self._probes: dict[int, tuple[tuple[int, int, dict[int, Entry]], ...]] = {4: (), 6: ()}
        self._metas: list[tuple[str, str, str, str]] = []
        self._meta_ids: dict[tuple[str, str, str, str], int] = {}
        self._count = 0
        # decisions held per meta slot, per family: kept by the writers as they go, so
        # `counts` copies two short lists instead of walking a million decisions
        self._held: dict[int, list[int]] = {4: [], 6: []}
        self._buckets = _V4Buckets(self._held[4], private)
        self._v4 = self._buckets.slots  # the same list, read flat by `lookup`
        # IPv4 ranges of /16 to /31 are only probed under the /16 they sit in: per /16, the
        # prefix lengths present there (a miss then costs a probe per length actually
        # present in that /16, not one per length in the whole set).
        self._top_lens: dict[int, dict[int, int]] = {}
        self._top_probes: dict[int, tuple[tuple[int, int, dict[int, Entry]], ...]] = {}
        self._v4_always: tuple[tuple[int, int, dict[int, Entry]], ...] = ()

    def publish(self) -> None:
        """Call before readers can see an index built with private=True: its buckets,
        grown in place so far, are frozen and from now on replaced whole."""
        self._buckets.publish()

    def __len__(self) -> int:
        return self._count

    def _rebuild_probes(self, family: int) -> None:
        bits = 32 if family == 4 else 128
        tables = self._tables[family]
        self._probes[family] = tuple(
            (bits - plen, plen, tables[plen])
            for plen in sorted(tables, reverse=True) if tables[plen]
        )
        if family == 4:
            self._v4_always = tuple(p for p in self._probes[4] if not 16 <= p[1] <= 31)

    def _note(self, key: int, plen: int, delta: int) -> None:
        """Count a network key of an IPv4 /16-/31 table in or out of its /16; the /16's
        probe tuple is replaced whole, so a reader sees the old one or the new one."""
        top = key >> (plen - 16)
        lens = self._top_lens.setdefault(top, {})
        n = lens.get(plen, 0) + delta
        if n > 0:
            lens[plen] = n
        else:
            lens.pop(plen, None)
        if lens:
            tables = self._tables[4]
            self._top_probes[top] = tuple((32 - p, p, tables[p])
                                          for p in sorted(lens, reverse=True))
        else:
            del self._top_lens[top]
            self._top_probes.pop(top, None)

    def _pack(self, d: Decision) -> int:
        meta = (d.type, d.scope, d.origin, d.scenario)
        return (d.id << 64) | self._pack_low(meta, d.expires)

    def _pack_low(self, meta: tuple[str, str, str, str], expires: float) -> int:
        """Expiry and meta slot: the low 64 bits of a packed decision."""
        slot = self._meta_ids.get(meta)
        if slot is None:
            if len(self._metas) > _META_MASK:
                raise OverflowError("too many distinct decision types, origins and scenarios")
            slot = len(self._metas)
            self._metas.append(meta)
            self._held[4].append(0)
            self._held[6].append(0)
            self._meta_ids[meta] = slot
        tenths = min(max(math.ceil(expires * 10.0), 0), _EXP_MASK)
        return (tenths << _META_BITS) | slot

    def add_ipv4(self, ident: int, number: int, meta: tuple[str, str, str, str],
                 expires: float) -> bool:
        """`add` for an Ip decision on an IPv4 address already parsed (the startup fast
        path, a million times in a row: hence flat); False when the id does not fit, and
        `add` must be used."""
        if not 0 <= ident < _ID_LIMIT:
            return False
        slot = self._meta_ids.get(meta)
        if slot is None or not 0.0 <= expires < _EXP_LIMIT:
            low_pack = self._pack_low(meta, expires)
        else:
            tenths = int(expires * 10.0)
            low_pack = (tenths + (tenths < expires * 10.0)) << _META_BITS | slot  # ceil
        self._count += self._buckets.add(number, ident, low_pack)
        return True

    def _unpack(self, packed: int, family: int, plen: int, key: int) -> Decision:
        dtype, scope, origin, scenario = self._metas[packed & _META_MASK]
        value = network_text(family, plen, key << ((32 if family == 4 else 128) - plen), scope)
        return _new(Decision,  # type: ignore[call-overload]
                    (packed >> 64, dtype, scope, value, origin, scenario, _expiry(packed)))

    def add(self, decision: Decision, net: Network) -> None:
        """Hold one more decision; a decision with an id already held there replaces it."""
        if net.family == 4 and net.prefixlen == 32 and 0 <= decision.id < _ID_LIMIT:
            packed = self._pack(decision)
            self._count += self._buckets.add(net.number, decision.id, packed & _LOW_MASK)
            return
        tables = self._tables[net.family]
        table = tables.get(net.prefixlen)
        if table is None:
            table = tables[net.prefixlen] = {}
        packed = self._pack(decision)
        key = _key(net)
        old = table.get(key)
        held = self._held[net.family]
        held[packed & _META_MASK] += 1
        if old is None:
            table[key] = packed
            self._count += 1
            if len(table) == 1:
                self._rebuild_probes(net.family)
            if net.family == 4 and 16 <= net.prefixlen <= 31:
                self._note(key, net.prefixlen, 1)
            return
        olds = _packs(old)
        kept = tuple(p for p in olds if p >> 64 != decision.id)
        self._count += 1 - (len(olds) - len(kept))
        table[key] = (*kept, packed) if kept else packed
        for p in olds:
            if p >> 64 == decision.id:
                held[p & _META_MASK] -= 1

    def remove(self, ident: int, net: Network) -> bool:
        """Drop the decision with this id on this network; the others there stay."""
        if net.family == 4 and net.prefixlen == 32 and 0 <= ident < _ID_LIMIT:
            gone = self._buckets.drop(net.number, ident)
            self._count -= gone
            return gone > 0
        table = self._tables[net.family].get(net.prefixlen)
        if not table:
            return False
        key = _key(net)
        old = table.get(key)
        if old is None:
            return False
        olds = _packs(old)
        kept = tuple(p for p in olds if p >> 64 != ident)
        if len(kept) == len(olds):
            return False
        self._count -= 1
        held = self._held[net.family]
        for p in olds:
            if p >> 64 == ident:
                held[p & _META_MASK] -= 1
        if not kept:
            del table[key]
            if net.family == 4 and 16 <= net.prefixlen <= 31:
                self._note(key, net.prefixlen, -1)
            if not table:
                self._rebuild_probes(net.family)
        else:
            table[key] = kept if len(kept) > 1 else kept[0]
        return True

    def lookup(self, family: int, number: int, now: float, complete: bool = True,
               text: str = "") -> list[Decision]:
        """Unexpired decisions covering the address, most severe first, longest-lived first.

        With complete=False the search stops at the first ban (longest prefix first): a ban
        is the most severe type, so the verdict is the same and a hit costs one probe.
        `text`, the address's canonical text from `parse_address` if the caller has it, saves
        formatting it again for an IPv4 hit. Written flat, without helper calls: this runs
        for every client of the MTA.
        """
        found: list[Decision] = []
        if family == 4:
            bucket = self._v4[number >> 16]
            if bucket is not None:
                if bucket.__class__ is not bytes:
                    bucket = _frozen(*bucket)  # type: ignore[misc]  # a private index
                end = len(bucket) // _LOWS_PART
                pattern = (number & 0xFFFF).to_bytes(2, _ORDER)
                j = bucket.find(pattern, 0, end)  # type: ignore[union-attr]
                while j >= 0:
                    if not j & 1:  # a match straddling two entries is no match
                        pack, ident = _PAIR(bucket, end + (j << _PAIR_SHIFT))
                        expires = (pack >> _META_BITS & _EXP_MASK) / 10.0
                        if expires > now:
                            dtype, scope, origin, scenario = self._metas[pack & _META_MASK]
                            address = text or _ntoa(number.to_bytes(4, "big"))
                            decision = _new(Decision, (  # type: ignore[call-overload]
                                ident, dtype, scope,
                                address if scope == "Ip" else address + "/32",
                                origin, scenario, expires))
                            if not complete and dtype == "ban":
                                return [decision]
                            found.append(decision)
                    j = bucket.find(pattern, j + 1, end)  # type: ignore[union-attr]
            probes = self._top_probes.get(number >> 16, ()) + self._v4_always
        else:
            probes = self._probes[6]
        for shift, plen, table in probes:
            key = number >> shift
            entry = table.get(key)
            if entry is None:
                continue
            for packed in (entry,) if entry.__class__ is int else entry:  # type: ignore[union-attr]
                if (packed >> _META_BITS & _EXP_MASK) / 10.0 > now:
                    decision = self._unpack(packed, family, plen, key)
                    if not complete and decision.type == "ban":
                        return [decision]
                    found.append(decision)
        if len(found) > 1:
            found.sort(key=lambda d: (d.severity, -d.expires))
        return found

    def expire(self, now: float) -> int:
        """Forget decisions past their own expiry, whether or not LAPI said so.

        Each change is one a reader can see safely: a bucket replaced, one key of a table
        replaced or deleted, a /16's probe tuple replaced. (Emptying the /16 probes and
        refilling them here once hid every range ban from lookups for the length of the
        refill, about 0.1 s a sweep at 40k ranges.)"""
        removed = self._buckets.expire(now)
        for family, tables in self._tables.items():
            held = self._held[family]
            for plen, table in tables.items():
                stale = [key for key, entry in table.items()
                         if any(_expiry(p) <= now for p in _packs(entry))]
                for key in stale:
                    olds = _packs(table[key])
                    kept = tuple(p for p in olds if _expiry(p) > now)
                    removed += len(olds) - len(kept)
                    for p in olds:
                        if _expiry(p) <= now:
                            held[p & _META_MASK] -= 1
                    if kept:
                        table[key] = kept if len(kept) > 1 else kept[0]
                    else:
                        del table[key]
                        if family == 4 and 16 <= plen <= 31:
                            self._note(key, plen, -1)
            self._rebuild_probes(family)
        self._count -= removed
        return removed

    def counts(self) -> dict[tuple[str, int], int]:
        """Decisions held by (scope, family), for metrics and the status line.

        Safe from any thread without the lock, and cheap: it reads the tallies the writers
        keep (one list copy per family, each atomic), never the decisions themselves.
        """
        result: dict[tuple[str, int], int] = {}
        for (_, scope, _, _), family, n in self.held():
            result[(scope, family)] = result.get((scope, family), 0) + n
        return result

    def held(self) -> list[tuple[tuple[str, str, str, str], int, int]]:
        """(type, scope, origin, scenario), family and how many such decisions are held,
        for each kind held at least once: a snapshot, O(number of kinds)."""
        metas = self._metas[:]
        # a kind being added meanwhile may make the lists one longer than `metas`: its
        # count is still 0, so stopping at the shorter one loses nothing
        return [(meta, family, n) for family in (4, 6)
                for meta, n in zip(metas, self._held[family][:], strict=False) if n]

    def decisions(self) -> Iterable[Decision]:
        """Every decision held (expired ones included until the next `expire`)."""
        for number, packed in self._buckets.entries():
            yield self._unpack(packed, 4, 32, number)
        for family, tables in self._tables.items():
            for plen, table in tables.items():
                for key, entry in table.items():
                    for packed in _packs(entry):
                        yield self._unpack(packed, family, plen, key)

    # -- saving and restoring (the state file, state.py) --------------------------------

    def export(self) -> Export:
        """Everything held, for the state file, without copying the decisions: the kinds
        by slot, the IPv4 /32 buckets as they are, every other decision by table. Expiries
        stay on this process's monotonic clock (the file says how to read them). Call from
        the one writer (the puller) or under `lock`; nothing is changed."""
        slots = self._buckets.slots
        # no tuple per bucket or per decision: a million small objects would bring the
        # cyclic garbage collector round many times, costing more than the copying
        tops = [top for top, bucket in enumerate(slots) if bucket is not None]
        buckets = [slots[top] if slots[top].__class__ is bytes  # type: ignore[misc]
                   else _frozen(*slots[top]) for top in tops]  # type: ignore[misc]
        tables = []
        for family, by_len in self._tables.items():
            for plen, table in by_len.items():
                keys: list[int] = []
                packs: list[int] = []
                for key, entry in table.items():
                    for packed in _packs(entry):
                        keys.append(key)
                        packs.append(packed)
                if keys:
                    tables.append((family, plen, keys, packs))
        return Export(list(self._metas), tops, buckets, tables)  # type: ignore[arg-type]

    @classmethod
    def restore(cls, data: Restore, shift: int, now: float) -> tuple[DecisionIndex, int]:
        """A published index holding `data` with every expiry moved by `shift` tenths (the
        writer's clock to this process's), and how many decisions it dropped as expired
        at `now`. ValueError when `data` does not hold together.

        Bulk work in C (array, map) for the million IPv4 /32 decisions: one pass moves
        every expiry, the buckets are cut from two long byte strings, and the usual sweep
        then drops what expired since."""
        index = cls()
        if len(set(data.metas)) != len(data.metas):
            raise ValueError("a decision kind is listed twice")
        for meta in data.metas:
            index._pack_low(meta, 0.0)  # the same slots, in the same order, as the writer's
        kinds = len(data.metas)
        tops, sizes, lows, pairs = data.v4
        total = sum(sizes)
        if len(tops) != len(sizes) or len(lows) != _LOW_SIZE * total \
                or len(pairs) != 2 * total or (sizes and min(sizes) == 0) \
                or any(a >= b for a, b in pairwise(tops)):
            raise ValueError("the IPv4 buckets do not add up")
        packs = _moved(pairs[0::2], shift)
        pairs[0::2] = packs
        held4 = index._held[4]
        for slot, n in Counter(map(_META_MASK.__and__, packs)).items():
            if slot >= kinds:
                raise ValueError("an IPv4 decision names an unknown decision kind")
            held4[slot] += n
        raw = pairs.tobytes()
        slots = index._buckets.slots
        start = 0
        for top, n in zip(tops, sizes, strict=True):
            end = start + n
            slots[top] = lows[_LOW_SIZE * start:_LOW_SIZE * end] + \
                raw[_PAIR_SIZE * start:_PAIR_SIZE * end]
            start = end
        index._count = total
        for family, plen, keys, table_lows, ids in data.tables:
            bits = 32 if family == 4 else 128 if family == 6 else 0
            if not 0 <= plen <= bits or not len(keys) == len(table_lows) == len(ids) \
                    or (keys and not 0 <= min(keys) <= max(keys) < 1 << plen):
                raise ValueError(f"the table of IPv{family} /{plen} is malformed")
            moved = _moved(table_lows, shift)
            held = index._held[family]
            for slot, n in Counter(map(_META_MASK.__and__, moved)).items():
                if slot >= kinds:
                    raise ValueError("a decision names an unknown decision kind")
                held[slot] += n
            table = index._tables[family].setdefault(plen, {})
            for key, low, ident in zip(keys, moved, ids, strict=True):
                old = table.get(key)
                packed = ident << 64 | low
                table[key] = packed if old is None else (*_packs(old), packed)
            index._count += len(keys)
        for family in (4, 6):
            index._rebuild_probes(family)
        for plen, table in index._tables[4].items():
            if 16 <= plen <= 31:
                for key in table:
                    lens = index._top_lens.setdefault(key >> (plen - 16), {})
                    lens[plen] = lens.get(plen, 0) + 1
        tables4 = index._tables[4]
        for top, lens in index._top_lens.items():
            index._top_probes[top] = tuple((32 - p, p, tables4[p])
                                           for p in sorted(lens, reverse=True))
        return index, index.expire(now)


class Export(NamedTuple):
    """What an index holds, as `DecisionIndex.export` gives it: the (type, scope, origin,
    scenario) kinds by slot; the IPv4 /32 buckets' tops (16 bits) and their bytes in this
    machine's byte order; every other decision by table as (family, prefix length,
    network keys, packed ints)."""

    metas: list[tuple[str, str, str, str]]
    tops: list[int]
    buckets: list[bytes]
    tables: list[tuple[int, int, list[int], list[int]]]


class Restore(NamedTuple):
    """What `DecisionIndex.restore` rebuilds an index from (as the state file holds it):
    the kinds by slot; the IPv4 /32 decisions as (bucket tops, decisions per bucket, every
    bucket's low halves end to end, every bucket's (pack, id) pairs end to end); every
    other decision by table as (family, prefix length, network keys, packs, ids).
    Changes the pair and pack arrays it is given."""

    metas: list[tuple[str, str, str, str]]
    v4: tuple[array, array, bytes, array]
    tables: list[tuple[int, int, list[int], array, array]]


def _moved(packs: array, shift: int) -> array:
    """Packed expiry+slot words with every expiry moved by `shift` tenths, in one C-level
    pass; an expiry that would fall below 0 becomes 0 with slot 0 (long expired: the
    sweep that follows a restore drops it, and counts it under that slot both ways)."""
    if not packs:
        return array("Q")
    if ((max(packs) >> _META_BITS) & _EXP_MASK) + shift > _EXP_MASK:
        return array("Q", [_shifted(p, shift) for p in packs])  # a clock set far back
    delta = shift << _META_BITS
    if shift >= 0:
        return array("Q", map(delta.__add__, packs))
    return array("Q", map(delta.__add__, map(max, packs, repeat(-delta))))


def _shifted(packed: int, shift: int) -> int:
    """A packed decision with its expiry moved by `shift` tenths, kept in the field's
    range (below 0 is long expired, above its top is as good as never)."""
    tenths = min(max(((packed >> _META_BITS) & _EXP_MASK) + shift, 0), _EXP_MASK)
    return (packed & ~(_EXP_MASK << _META_BITS)) | tenths << _META_BITS
