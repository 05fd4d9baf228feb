"""Decision sources: where the policy gets the decisions that cover a client address.

`StreamSource` keeps every decision in memory and pulls deltas in a background thread;
`LiveSource` asks LAPI per address and caches the answer. Both answer `lookup` with a list
of unexpired decisions, or None while no decision can be had (then `--on-lapi-error` rules),
and both show the rest of the milter the same small surface: `start`, `stop`, `usable` and
`stats()`, one `SourceStats` record for metrics and usage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from cachetools import TLRUCache

from .decisions import (
    ACCOUNT_SCOPE,
    WIDEST_RANGE,
    Decision,
    DecisionError,
    Network,
    Partial,
    network_text,
    parse_decision,
    parse_ipv4_fast,
    parse_scoped_decision,
    too_wide,
)
from .geo import Geo, ScopedDecisions
from .index import DecisionIndex
from .lapi import LapiClient, LapiError
from .state import Loaded, StateFile

log = logging.getLogger("crowdsec_milter.source")

# Full resyncs come every --resync-interval at the latest, and as often as every
# AUDIT_MIN seconds while one costs little: at most 1/AUDIT_SHARE of the time (a 15k
# blocklist: every minute; 1M decisions, 7 s a pull: every 6 minutes). CrowdSec 1.4.6 can
# leave a decision out of every delta (one committed while a pull ran: its created_at falls
# before the cursor that pull set); only a full pull brings it (integration/test_drift.py
# caught a ban held by LAPI and missing here until the hourly resync). LAPI's ids only
# grow, so a delta bringing a higher id while one in between never came is the sign of
# such a loss: the next pull is then a full one, within the same cost share.
AUDIT_MIN = 60.0
AUDIT_SHARE = 50


@dataclass(frozen=True)
class SourceStats:
    """One reading of a decision source, the same record from either source: metrics and
    usage read it without asking which source they have. A field that does not apply to
    a source is None (then no metric is made of it)."""

    mode: str  # "stream" or "live": the label of the LAPI request count
    usable: bool
    requests: int  # stream pulls or live queries made
    errors: dict[str, int]  # failed requests by LapiError kind
    bad_decisions: int  # decisions from LAPI skipped as unusable
    active: int  # decisions held in memory (a live source holds none)
    held: dict[tuple[str, int], int] | None = None  # by (scope, family), where held
    last_good: float | None = None  # monotonic time of the last good pull, where pulled
    wide: int = 0  # Range decisions known but not enforced: wider than --widest-range
    cache_hits: int | None = None  # where answers are cached
    cache_entries: int | None = None
    cache_size: int | None = None


class Source(Protocol):
    """What the running milter holds: the policy asks `lookup`, /health reads `usable`,
    metrics and usage read `stats()`, the app starts and stops it, hears of each pull
    through `on_pull` and asks the watchdog's question, `alive`."""

    on_pull: Callable[[bool, int], None] | None

    @property
    def usable(self) -> bool: ...

    @property
    def alive(self) -> bool: ...

    def lookup(self, family: int, number: int, text: str,
               complete: bool = True) -> list[Decision] | None: ...

    def lookup_account(self, user: str) -> list[Decision] | None: ...

    def stats(self) -> SourceStats: ...

    def locate(self, ip: str) -> tuple[str, str]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class _Counts:
    """A source's running counters; `stats()` reads them into a SourceStats."""

    requests: int = 0
    last_good: float | None = None
    bad_decisions: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def failed(self, exc: LapiError) -> None:
        self.errors[exc.kind] = self.errors.get(exc.kind, 0) + 1


class _Counter:
    """Unusable decisions in one answer: counted, and the first one named in the log."""

    def __init__(self) -> None:
        self.bad = 0
        self.first = ""

    def parse(self, item: Any, now: float) -> tuple[Decision, Network] | None:
        """parse_decision, counting an unusable decision instead of raising."""
        try:
            parsed = parse_decision(item, now)
        except DecisionError as exc:
            self.bad += 1
            self.first = self.first or str(exc)
            return None
        if parsed is None:
            log.debug("ignoring decision with scope %r", item.get("scope"))
        return parsed

    def parse_scoped(self, item: Any, now: float) -> Decision | None:
        """parse_scoped_decision (Country, AS), counting an unusable one."""
        try:
            return parse_scoped_decision(item, now)
        except DecisionError as exc:
            self.bad += 1
            self.first = self.first or str(exc)
            return None

    def report(self, counts: _Counts) -> None:
        if self.bad:
            counts.bad_decisions += self.bad
            log.warning("skipped %d unusable decision(s) from LAPI; first: %s",
                        self.bad, self.first)


class WideRanges:
    """Range decisions wider than --widest-range: known, never enforced (one mistyped
    0.0.0.0/0 would refuse every client of the MTA), each logged once with its id and
    origin, and counted for metrics, `check` and `lookup`. Written by the puller or by
    live lookups, read by metrics: a lock, the set is small."""

    LIMIT = 10_000  # decisions held aside at most (expired ones go first)

    def __init__(self, widest: tuple[int, int] = WIDEST_RANGE,
                 logged: set[int] | None = None) -> None:
        self.widest = widest
        self._held: dict[int, Decision] = {}
        self._logged = logged if logged is not None else set()  # ids already logged
        self._lock = threading.Lock()

    def fresh(self) -> WideRanges:
        """An empty set for a full resync, sharing what was logged (logged once, not at
        every resync)."""
        return WideRanges(self.widest, self._logged)

    def settle(self) -> None:
        """After a resync swapped this set in: forget the log marks of decisions gone."""
        with self._lock:
            self._logged.intersection_update(self._held)

    def catch(self, decision: Decision, net: Network) -> bool:
        """True when the decision is too wide: then held aside (logged the first time)."""
        if not too_wide(net, self.widest):
            return False
        with self._lock:
            if len(self._held) >= self.LIMIT and decision.id not in self._held:
                held = self._held
                del held[min(held, key=lambda i: held[i].expires)]
            self._held[decision.id] = decision
            new = decision.id not in self._logged
            self._logged.add(decision.id)
            if len(self._logged) > 2 * self.LIMIT:  # live mode never resyncs: bound it
                self._logged.intersection_update(self._held)
        if new:
            bound = self.widest[0 if net.family == 4 else 1]
            log.warning("not enforcing decision id=%d type=%s scope=%s value=%s origin=%s "
                        "scenario=%s: wider than /%d for IPv%d (--widest-range %d,%d); it "
                        "would block every client it covers", decision.id, decision.type,
                        decision.scope, decision.value, decision.origin, decision.scenario,
                        bound, net.family, *self.widest)
        return True

    def drop(self, ident: int) -> bool:
        with self._lock:
            return self._held.pop(ident, None) is not None

    def held(self, now: float) -> list[Decision]:
        """The unexpired decisions set aside (expired ones are forgotten)."""
        with self._lock:
            for ident in [i for i, d in self._held.items() if d.expires <= now]:
                del self._held[ident]
            return list(self._held.values())


def _add(item: Any, now: float, into: DecisionIndex, count: _Counter,
         scoped: ScopedDecisions | None = None, wide: WideRanges | None = None) -> None:
    """Hold one decision: Ip and Range ones in the index (too wide ones aside in `wide`),
    Country and AS ones in `scoped` (when there is one: a database to match them)."""
    if item.__class__ is dict:
        fast = parse_ipv4_fast(item, now)
        if fast is not None and into.add_ipv4(*fast):
            return
    parsed = count.parse(item, now)
    if parsed is not None:
        if wide is None or not wide.catch(*parsed):
            into.add(*parsed)
    elif scoped is not None:
        geo = count.parse_scoped(item, now)
        if geo is not None:
            scoped.add(geo)


def _delete(item: Any, now: float, index: DecisionIndex,
            scoped: ScopedDecisions | None = None, wide: WideRanges | None = None) -> int:
    """Drop one decision LAPI lists as deleted (by id: another decision on the same value
    stays); 1 if it was held."""
    try:
        parsed = parse_decision(_as_live(item), now)
        if parsed is None and scoped is not None:
            geo = parse_scoped_decision(_as_live(item), now)
            return 1 if geo is not None and scoped.remove(geo.scope, geo.value, geo.id) else 0
    except DecisionError as exc:
        log.debug("ignoring unusable deleted decision: %s", exc)
        return 0
    if parsed is not None and wide is not None and too_wide(parsed[1], wide.widest):
        return 1 if wide.drop(parsed[0].id) else 0
    return 1 if parsed is not None and index.remove(parsed[0].id, parsed[1]) else 0


class _LapiSource:
    """What both sources keep: the LAPI client, the clock and the running counters."""

    def __init__(self, client: LapiClient, clock: Callable[[], float]) -> None:
        self._client = client
        self._clock = clock
        self._counts = _Counts()
        # told after each stream pull: (applied, decisions held); systemd's READY and
        # STATUS. A live source pulls nothing, so never calls it.
        self.on_pull: Callable[[bool, int], None] | None = None
        self._geo: Geo | None = None

    def locate(self, ip: str) -> tuple[str, str]:
        """(country, AS) of an address from the databases given ('' for what is unknown):
        the auth_session event's place."""
        place = self._geo.locate(ip) if self._geo is not None else None
        return place or ("", "")


class StreamSource(_LapiSource):
    """All decisions in memory, kept current by pulling /v1/decisions/stream."""

    def __init__(self, client: LapiClient, update_frequency: float, *,
                 resync_interval: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic,
                 geo: Geo | None = None, widest: tuple[int, int] = WIDEST_RANGE,
                 accounts: bool = False, state: StateFile | None = None) -> None:
        super().__init__(client, clock)
        self._wide = WideRanges(widest)
        # the last good decisions on disk: loaded at start, written after changes
        self._state = state
        self._dirty = False  # the index changed since the state file was last written
        # Country and AS decisions, asked of LAPI only for the scopes a database can match;
        # account (username) decisions unless account checks are off
        self._geo = geo
        extra = (*(geo.scopes if geo else ()), *((ACCOUNT_SCOPE,) if accounts else ()))
        self._scopes = ",".join(("ip", "range", *extra)) if extra else ""
        self._scoped = ScopedDecisions()
        self._every = update_frequency
        self._resync_interval = resync_interval
        self._index = DecisionIndex()
        self._synced = False
        self._need_startup = True
        self._last_startup = 0.0
        self._resync_took = 0.0  # seconds the last full resync took
        self._max_id = 0  # the highest decision id LAPI has sent (0: none yet)
        self._gap = False  # an id below it never came: a resync is due
        self._last_sweep = 0.0
        self._last_error_kind = ""
        # decisions in a full answer that would have dropped most of those held, kept
        # back until the next full pull says the same (None: no such answer pending)
        self._shrunk_to: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def usable(self) -> bool:
        return self._synced

    @property
    def index(self) -> DecisionIndex:
        return self._index

    def lookup(self, family: int, number: int, text: str,
               complete: bool = False) -> list[Decision] | None:
        if not self._synced:
            return None
        now = self._clock()
        found = self._index.lookup(family, number, now, complete, text)
        scoped = self._scoped
        if self._geo is not None and (scoped.held["Country"] or scoped.held["AS"]):
            # the databases are read only while some Country or AS decision is held
            located = self._geo.locate(text)
            if located is None:  # a database could not be read: Ip and Range stand
                return Partial(found)
            country, asn = located
            extra = (scoped.lookup("Country", country, now) if country else []) + \
                (scoped.lookup("AS", asn, now) if asn else [])
            if extra:
                found = sorted(found + extra, key=lambda d: (d.severity, -d.expires))
        return found

    def lookup_account(self, user: str) -> list[Decision] | None:
        """The unexpired decisions on a login, or None before the first sync."""
        if not self._synced:
            return None
        return self._scoped.lookup(ACCOUNT_SCOPE, user, self._clock())

    def _items(self, startup: bool) -> Iterator[tuple[str, Any]]:
        """One pull's items, asking for Country, AS and account decisions only where they
        are used (LAPI's default scopes are ip,range)."""
        if self._scopes:
            return self._client.stream_items(startup, self._scopes)
        return self._client.stream_items(startup)

    @property
    def scoped_count(self) -> int:
        """Country, AS and account decisions held."""
        return len(self._scoped)

    def stats(self) -> SourceStats:
        counts = self._counts
        return SourceStats("stream", self._synced, counts.requests, dict(counts.errors),
                           counts.bad_decisions, len(self._index) + len(self._scoped),
                           held=self._index.counts(),
                           last_good=counts.last_good,
                           wide=len(self._wide.held(self._clock())))

    def too_wide(self) -> list[Decision]:
        """The Range decisions held aside as wider than --widest-range."""
        return self._wide.held(self._clock())

    def pull_once(self) -> bool:
        """One pull (a full resync when due or after a failure); False if it failed.

        A failed pull keeps the decisions held; LAPI 1.4.6 moves its cursor before it sends
        the body, so the next pull after a failure is a full `startup=true` resync.
        """
        now = self._clock()
        self._counts.requests += 1
        try:
            since = now - self._last_startup
            if self._need_startup or since >= self._resync_every() or \
                    (self._gap and since >= AUDIT_SHARE * self._resync_took):
                self._resync(now)
            else:
                self._delta(now)
        except LapiError as exc:
            self._counts.failed(exc)
            self._need_startup = True
            if exc.kind != self._last_error_kind:
                log.error("stream pull failed (%s): %s; keeping %d decision(s)",
                          exc.kind, exc, len(self._index))
                self._last_error_kind = exc.kind
            return False
        now = self._clock()
        if now - self._last_sweep >= 60.0:
            with self._index.lock:
                self._index.expire(now)
                self._scoped.expire(now)
            self._last_sweep = now
        if self._last_error_kind:
            log.info("stream pull works again")
            self._last_error_kind = ""
        self._synced = True
        self._counts.last_good = now
        return True

    def _resync_every(self) -> float:
        """Seconds between full resyncs (see AUDIT_MIN)."""
        return min(self._resync_interval, max(AUDIT_MIN, AUDIT_SHARE * self._resync_took))

    def _resync(self, now: float) -> None:
        """Every active decision (`startup=true`) into a new index, built while the answer
        arrives and swapped in whole once it is all good; LapiError if it is not."""
        log.info("stream resync: pulling every active decision")
        fresh = DecisionIndex(private=True)  # nobody reads it yet: grown in place
        fresh_scoped = ScopedDecisions() if self._scopes else None
        fresh_wide = self._wide.fresh()
        count = _Counter()
        seen = 0
        top = 0
        for key, item in self._items(True):
            ident = item.get("id") if item.__class__ is dict else None
            if ident.__class__ is int and ident > top:  # type: ignore[operator]
                top = ident  # type: ignore[assignment]
            if key == "new":
                _add(item, now, fresh, count, fresh_scoped, fresh_wide)
                seen += 1
                if seen % 100_000 == 0:  # a big blocklist takes seconds: say so
                    log.info("stream resync: %d decisions read so far", seen)
        count.report(self._counts)
        done = self._clock()
        self._resync_took = max(done - now, 0.0)
        if not self._accept_resync(len(fresh), done):
            self._need_startup = True  # the next update pulls everything again
            return
        fresh.publish()
        self._index = fresh  # swapped whole: readers see the old index or the new one
        if fresh_scoped is not None:
            self._scoped = fresh_scoped
        self._wide = fresh_wide
        fresh_wide.settle()
        self._dirty = True
        self._last_startup = done
        self._need_startup = False
        self._max_id = top
        self._gap = False
        log.info("stream resync: %d decision(s) held", len(fresh))

    def _delta(self, now: float) -> None:
        """What changed since the last pull, applied to the index as it arrives (a
        blocklist refresh can bring 100k decisions); LapiError if the answer breaks off.
        A half-applied delta never lasts: the failed pull makes the next one a full resync,
        which replaces the index."""
        index = self._index
        scoped = self._scoped if self._scopes else None
        count = _Counter()
        added = deleted = 0
        ids = []
        with index.lock:
            for key, item in self._items(False):
                ident = item.get("id") if item.__class__ is dict else None
                if ident.__class__ is int and ident > self._max_id:  # type: ignore[operator]
                    ids.append(ident)
                if key == "new":
                    _add(item, now, index, count, scoped, self._wide)
                    added += 1
                else:
                    deleted += _delete(item, now, index, scoped, self._wide)
        count.report(self._counts)
        self._note_ids(ids)
        if added or deleted:
            self._dirty = True
            log.info("stream delta: %d new, %d deleted, %d held", added, deleted, len(index))

    def _note_ids(self, ids: list[int]) -> None:
        """Ids above the highest seen so far, from one delta: a hole among them means a
        decision no delta will bring (see AUDIT_MIN)."""
        if not ids:
            return
        top = max(ids)
        missing = top - self._max_id - len(set(ids))
        if missing > 0 and self._max_id and not self._gap:
            log.info("stream delta: %d decision id(s) below %d never came; a full resync "
                     "follows (LAPI can leave out a decision committed during a pull)",
                     missing, top)
            self._gap = True
        self._max_id = top

    def _accept_resync(self, fresh: int, now: float) -> bool:
        """Whether a full answer of `fresh` decisions may replace those held.

        One that would drop more than half of them is applied only once the next full
        pull agrees: LAPI streams its answer, and a database error halfway can still end
        it with a 200 and valid JSON that lacks most decisions; applying that would unban
        nearly everyone until the next resync. (Measured by count: a truncated answer
        brings few new decisions, so fewer than half as many is the sign.) Logged either
        way; with nothing held (start-up) any answer is taken.
        """
        held = len(self._index)
        if fresh * 2 < held:  # expired ones are no loss: sweep them before judging
            with self._index.lock:
                self._index.expire(now)
            self._last_sweep = now
            held = len(self._index)
        if fresh * 2 >= held:
            if self._shrunk_to is not None:
                log.warning("stream resync: %d decision(s) again, %d held; the earlier full "
                            "answer with only %d was not applied", fresh, held,
                            self._shrunk_to)
                self._shrunk_to = None
            return True
        if self._shrunk_to is None:
            self._shrunk_to = fresh
            log.warning("stream resync: LAPI's full answer has %d decision(s) where %d are "
                        "held; keeping those until the next full pull agrees (a cut-short "
                        "answer would unban most clients)", fresh, held)
            return False
        log.warning("stream resync: a second full answer has %d decision(s) (the first had "
                    "%d), %d held: applying it", fresh, self._shrunk_to, held)
        self._shrunk_to = None
        return True

    def run(self) -> None:
        """Pull until stopped; after failures wait longer (up to a minute) between tries."""
        delay = self._every
        while not self._stop.is_set():
            try:
                ok = self.pull_once()
            except Exception:  # a bug here must not kill the puller for good
                log.exception("unexpected error in the stream puller")
                ok = False
                self._need_startup = True
            if self.on_pull is not None:
                try:
                    self.on_pull(ok, len(self._index))
                except Exception:
                    log.exception("unexpected error reporting a pull")
            self._persist(final=False)
            delay = self._every if ok else min(max(delay * 2, self._every), 60.0)
            self._stop.wait(delay)
        self._persist(final=True)

    def _persist(self, final: bool) -> None:
        """Write the state file after pulls that changed the index: when its pacing allows,
        and at stop whatever is left. Runs in the puller, the index's only writer, so the
        file is one consistent set; lookups take no lock and go on meanwhile."""
        if self._state is None or not self._dirty or not (final or self._state.due()):
            return
        try:
            saved = self._state.save(self._index, self._scoped.all() if self._scopes else [])
        except Exception:  # a bug here must not kill the puller
            log.exception("unexpected error writing the state file")
            saved = False
        self._dirty = not saved

    def restore(self, loaded: Loaded) -> None:
        """Enforce decisions read back from the state file until the first good pull
        replaces them (that pull is a full resync: nothing from the file outlives it)."""
        self._index = loaded.index
        if self._scopes:  # only the scopes this milter asks for: a database or accounts
            asked = self._scopes.split(",")
            scoped = ScopedDecisions()
            for decision in loaded.scoped:
                if decision.scope.lower() in asked:
                    scoped.add(decision)
            self._scoped = scoped
        self._synced = True

    def start(self) -> None:
        """Load the state file (before the MTA can ask anything), then start pulling."""
        if self._state is not None:
            loaded = self._state.load()
            if loaded is not None:
                self.restore(loaded)
        self._thread = threading.Thread(target=self.run, name="lapi-stream", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The puller thread is alive (the watchdog asks)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def _as_live(item: Any) -> Any:
    """`deleted` decisions carry negative durations; only their id and network matter."""
    if isinstance(item, dict) and isinstance(item.get("duration"), str):
        return {**item, "duration": "0s"}
    return item


class _Pending:
    """One LAPI request in flight that other sessions for the same address wait on."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: list[Decision] | None = None


class LiveSource(_LapiSource):
    """Ask LAPI per address, cache the answer (ban or clean) for at most `cache_ttl`,
    never past a decision's own expiry, and let concurrent lookups of one address share
    a single request."""

    def __init__(self, client: LapiClient, cache_ttl: float, *, timeout: float,
                 maxsize: int = 100_000, clock: Callable[[], float] = time.monotonic,
                 geo: Geo | None = None, widest: tuple[int, int] = WIDEST_RANGE,
                 accounts: bool = False) -> None:
        super().__init__(client, clock)
        self._wide = WideRanges(widest)
        self._geo = geo  # also asks for the address's Country and AS decisions
        self._accounts = accounts
        self._ttl = cache_ttl
        self._timeout = timeout
        self._cache: TLRUCache = TLRUCache(maxsize=maxsize, ttu=self._ttu, timer=clock)
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._cache_hits = 0
        self._ok = True

    @property
    def usable(self) -> bool:
        return self._ok

    @property
    def alive(self) -> bool:
        """Always: a live source has no thread that could die."""
        return True

    def start(self) -> None:
        """Nothing to start: a live source asks LAPI when a client connects."""

    def stop(self) -> None:
        """Nothing to stop (the client, shared with the usage pusher, is closed apart)."""

    def stats(self) -> SourceStats:
        counts = self._counts
        with self._lock:  # expired answers linger until the cache next touches them
            entries = len(self._cache)
        return SourceStats("live", self._ok, counts.requests, dict(counts.errors),
                           counts.bad_decisions, 0, wide=len(self._wide.held(self._clock())),
                           cache_hits=self._cache_hits,
                           cache_entries=entries, cache_size=int(self._cache.maxsize))

    def too_wide(self) -> list[Decision]:
        """The Range decisions seen in answers and not enforced: wider than
        --widest-range."""
        return self._wide.held(self._clock())

    def _ttu(self, _key: Any, decisions: list[Decision], now: float) -> float:
        if decisions:
            return min(now + self._ttl, min(d.expires for d in decisions))
        return now + self._ttl

    def lookup(self, family: int, number: int, text: str,
               complete: bool = True) -> list[Decision] | None:
        """Every decision LAPI holds on the address (`complete` changes nothing here), with
        those on its country and AS when a database tells them; each answer cached.

        None when the address's own query fails (LAPI is down: no more queries to wait
        on). When its country's or AS's fails, or the database cannot be read, what was
        had comes as a Partial list: an Ip ban already fetched still counts."""
        found = self._cached(f"{family}:{number}", lambda: self._client.query(text))
        if self._geo is None or found is None:
            return found
        located = self._geo.locate(text)
        unknown = located is None
        for scope, value in zip(("Country", "AS"), located or ("", ""), strict=True):
            if value and not unknown:
                more = self._cached(f"{scope}:{value}",
                                    lambda s=scope, v=value: self._client.query_scope(s, v))
                if more is None:
                    unknown = True  # and ask no more of a LAPI that just failed
                else:
                    found = found + more
        if len(found) > 1:
            found.sort(key=lambda d: (d.severity, -d.expires))
        return Partial(found) if unknown else found

    def lookup_account(self, user: str) -> list[Decision] | None:
        """LAPI's decisions on a login (`scopes=username&value=...`), cached like an
        address's; [] with account checks off."""
        if not self._accounts:
            return []
        return self._cached(f"{ACCOUNT_SCOPE}:{user}",
                            lambda: self._client.query_scope(ACCOUNT_SCOPE, user))

    def _cached(self, key: str, ask: Callable[[], list[Any]]) -> list[Decision] | None:
        """The cached answer under `key`, or one request (`ask`) shared by every lookup of
        it that comes meanwhile."""
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache_hits += 1
                now = self._clock()
                return [d for d in cached if d.expires > now]
            pending = self._pending.get(key)
            leader = pending is None
            if leader:
                pending = self._pending[key] = _Pending()
        assert pending is not None
        if not leader:
            pending.done.wait(self._timeout + 0.5)
            return pending.result
        try:
            pending.result = self._fetch(ask)
            if pending.result is not None:
                with self._lock:
                    self._cache[key] = pending.result
            return pending.result
        finally:
            with self._lock:
                self._pending.pop(key, None)
            pending.done.set()

    def _fetch(self, ask: Callable[[], list[Any]]) -> list[Decision] | None:
        self._counts.requests += 1
        try:
            items = ask()
        except LapiError as exc:
            self._counts.failed(exc)
            if self._ok:
                log.error("live lookup failed (%s): %s", exc.kind, exc)
            self._ok = False
            return None
        if not self._ok:
            log.info("live lookups work again")
        self._ok = True
        now = self._clock()
        count = _Counter()
        # by id and network, as the index would hold them: a repeat replaces, not adds
        found: dict[tuple[int, Network], Decision] = {}
        scoped: dict[int, Decision] = {}
        for item in items:
            parsed = count.parse(item, now)
            if parsed is not None:
                decision, net = parsed
                if self._wide.catch(decision, net):
                    continue
                value = network_text(net.family, net.prefixlen, net.number, decision.scope)
                found[decision.id, net] = decision._replace(value=value)
            elif self._geo is not None or self._accounts:
                geo = count.parse_scoped(item, now)
                if geo is not None:
                    scoped[geo.id] = geo
        count.report(self._counts)
        return sorted([*found.values(), *scoped.values()],
                      key=lambda d: (d.severity, -d.expires))
