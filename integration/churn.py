"""Drift under churn: does the milter's verdict for every address follow LAPI's own truth?

A real LAPI (CrowdSec 1.4.6 from Debian) gets random adds, deletes (by value and by id),
re-adds with shorter durations, short decisions that expire on their own, and restarts;
every few seconds every address is asked of the running milter (milter protocol, as an
MTA asks) and compared with what LAPI holds at that moment: every decision of `cscli alerts
list -o json` still running, cross-checked each round with LAPI's bouncer API (`GET
/v1/decisions`, with a bouncer key of its own). Not `cscli decisions list`: CrowdSec
1.4.6's shows one decision per value, the newest ("N duplicated entries skipped"), so a
short ban added beside a long one hides the long one, which LAPI still hands to bouncers.

A mismatch is excused while the truth of that address changed less than one window ago
(`window`: the pull interval or cache TTL, plus a grace for the pull itself): that is the
milter's design, not drift. Changes are timed conservatively: an op counts from when cscli
returned, an expiry from the latest instant LAPI's own numbers allow. A change made just
before a LAPI outage is excused until the milter could pull again (stream: its log's
"stream pull works again"; live: LAPI answering) plus a window. Anything else is drift.
In live mode nothing is compared while LAPI is down (the milter then answers as
--on-lapi-error says, by design).

Used by integration/test_drift.py (short, fixed seed, CI) and bench/drift.py (long).
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from milter_process import MilterProcess, verdict
from real_crowdsec import CrowdSec

V4 = [f"203.0.113.{i}" for i in range(1, 65)]
V6 = [f"2001:db8:d1::{i:x}" for i in range(1, 41)]
RANGES = ["203.0.113.0/28", "203.0.113.16/28", "203.0.113.48/29",
          "2001:db8:d1::/124", "2001:db8:d1::20/125"]
DURATIONS = ["3s", "5s", "8s", "12s", "20s", "45s", "2m", "10m"]
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def covers(value: str, address: str) -> bool:
    net = ipaddress.ip_network(value, strict=False)
    ip = ipaddress.ip_address(address)
    return ip.version == net.version and ip in net


@dataclass
class Mismatch:
    at: float  # unix time of the verdict
    address: str
    milter: str
    lapi_banned: bool
    age: float  # seconds since the address's truth last changed (inf: never)
    decisions: list[str]
    outage: bool = False  # excused as a change the milter could not pull (LAPI down)


@dataclass
class Report:
    mode: str
    seconds: float = 0.0
    rounds: int = 0
    comparisons: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    skipped_down: int = 0  # live mode: not compared while LAPI was down
    excused: list[Mismatch] = field(default_factory=list)
    drift: list[Mismatch] = field(default_factory=list)
    window: float = 0.0
    banned_seen: int = 0  # comparisons where LAPI said banned

    outage_excused: int = 0  # of `excused`: near a LAPI outage
    truth_disagreements: int = 0  # rounds where cscli and LAPI's bouncer API differed

    @property
    def max_excused_age(self) -> float:
        """The slowest catch-up outside outages: seconds from a change to a mismatch
        still seen (within the window by definition, or it would be drift)."""
        return max((m.age for m in self.excused if m.age != float("inf")
                    and not m.outage), default=0.0)

    def lines(self) -> list[str]:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        out = [f"mode {self.mode}: {self.seconds:.0f} s, {self.rounds} rounds, "
               f"{self.comparisons} verdicts compared ({self.banned_seen} banned by LAPI), "
               f"ops: {ops}, LAPI restarts {self.restarts}",
               f"  window {self.window:.1f} s; mismatches within it: {len(self.excused)}, "
               f"{self.outage_excused} of them while LAPI was down or the milter had "
               f"not pulled since; the slowest other catch-up {self.max_excused_age:.2f} s "
               f"after the change; beyond the window (drift): {len(self.drift)}"]
        ages = sorted(m.age for m in self.excused if not m.outage and m.age != float("inf"))
        if ages:
            out.append("  catch-up ages of the mismatches within the window (s): " + " ".join(
                f"{a:.2f}" for a in ages[:: max(1, len(ages) // 15)]) + f" max {ages[-1]:.2f}")
        out.append(f"  rounds where `cscli alerts list` and LAPI's GET /v1/decisions "
                   f"disagreed: {self.truth_disagreements}")
        if self.skipped_down:
            out.append(f"  not compared while LAPI was down (live mode answers "
                       f"--on-lapi-error): {self.skipped_down}")
        for m in self.drift[:20]:
            out.append(f"  DRIFT {time.strftime('%H:%M:%S', time.localtime(m.at))} "
                       f"{m.address}: milter {m.milter}, LAPI banned={m.lapi_banned}, "
                       f"{m.age:.1f} s after its last change; LAPI: {m.decisions}")
        return out


class Churn:
    """One LAPI, one milter in `mode`, a seeded random walk of changes and checks."""

    def __init__(self, workdir: Path, mode: str, seed: int, *, interval: float = 1.0,
                 grace: float = 2.0) -> None:
        self.rnd = random.Random(seed)
        self.mode = mode
        self.interval = interval
        self.window = interval + grace
        self.cs = CrowdSec(workdir / "cs").start()
        key = self.cs.add_bouncer(f"drift-{mode}")
        # asks LAPI what it tells bouncers; never the milter's key (a GET moves a cursor)
        self.truth_key = self.cs.add_bouncer("drift-truth")
        (workdir / "milter").mkdir(parents=True, exist_ok=True)
        args = ["--mode", mode, "--update-frequency", str(interval),
                "--cache-ttl", str(interval), "--event-log", "none"]
        self.milter = MilterProcess(workdir / "milter", self.cs.lapi_url, key, *args)
        self.milter.start("decision(s) held" if mode == "stream" else None)
        self.addresses = V4 + V6
        # address -> times its truth may have changed (op done, decision expiring)
        self.changes: dict[str, list[float]] = {a: [] for a in self.addresses}
        # [went down, could be pulled again]; the second is inf while it is still down
        self.outages: list[list[float]] = []
        self.report = Report(mode, window=self.window)
        self.last_truth: list[dict[str, Any]] = []  # decisions, each with "expires"

    # -- LAPI side ---------------------------------------------------------------------

    def truth(self) -> list[dict[str, Any]]:
        """Active ban decisions per `cscli alerts list` (those with time left), each with
        the latest unix time it can expire (`expires`) and the earliest (`expires_lo`);
        checked against LAPI's bouncer API."""
        start = time.time()
        raw = self.cs.cscli("alerts", "list", "-o", "json", "--limit", "0").strip()
        end = time.time()
        alerts = json.loads(raw) if raw and raw != "null" else []
        found = []
        for alert in alerts or []:
            for d in alert.get("decisions") or []:
                left = _seconds(d["duration"])
                if d.get("type") != "ban" or left <= 0:
                    continue
                found.append({**d, "expires": end + left, "expires_lo": start + left})
        answer = httpx.get(self.cs.lapi_url + "v1/decisions",
                           headers={"X-Api-Key": self.truth_key}, timeout=10).json() or []
        told = {d["id"] for d in answer if _seconds(d["duration"]) > 1.0}
        listed = {d["id"] for d in found if d["expires_lo"] - time.time() > 1.0}
        if told - {d["id"] for d in found} or listed - {d["id"] for d in answer}:
            self.report.truth_disagreements += 1
        for d in found:  # its expiry is a change for what it covers
            self._changed(d["value"], d["expires"])
        self.last_truth = found
        return found

    def _changed(self, value: str, at: float) -> None:
        for a in self.addresses:
            if covers(value, a):
                self.changes[a].append(at)

    def _count(self, op: str) -> None:
        self.report.ops[op] = self.report.ops.get(op, 0) + 1

    def op(self) -> None:
        """One random change, done with cscli as an operator would."""
        rnd = self.rnd
        held = self.last_truth
        choice = rnd.random()
        if choice < 0.45 or not held:
            value = rnd.choice(RANGES) if rnd.random() < 0.15 else rnd.choice(self.addresses)
            duration = rnd.choice(DURATIONS)
            self._add(value, duration, "add")
        elif choice < 0.60:  # a shorter decision beside a longer one
            d = rnd.choice(held)
            shorter = [x for x in DURATIONS if _seconds(x) < d["expires"] - time.time()]
            self._add(d["value"], rnd.choice(shorter or DURATIONS[:1]), "re-add shorter")
        elif choice < 0.80:  # one decision by id: others on the same value stay
            d = rnd.choice(held)
            self.cs.cscli("decisions", "delete", "--id", str(d["id"]))
            self._changed(d["value"], time.time())
            self._count("delete by id")
        else:  # every decision on a value (`--ip` may take ranges holding it too)
            d = rnd.choice(held)
            scope = "--range" if "/" in d["value"] else "--ip"
            self.cs.cscli("decisions", "delete", scope, d["value"])
            done = time.time()
            self._changed(d["value"], done)
            for r in RANGES:  # conservative: what LAPI may have matched besides
                if "/" not in d["value"] and covers(r, d["value"]):
                    self._changed(r, done)
            self._count("delete by value")

    def _add(self, value: str, duration: str, kind: str) -> None:
        scope = "--range" if "/" in value else "--ip"
        self.cs.cscli("decisions", "add", scope, value, "--duration", duration,
                      "--reason", "churn")
        done = time.time()
        self._changed(value, done)
        self._changed(value, done + _seconds(duration))  # its end
        self._count(kind)

    def restart_lapi(self, down: float, check: Callable[[], None]) -> None:
        """LAPI stopped for `down` seconds (checks go on meanwhile), then started."""
        self.truth()  # the truth the checks use while LAPI is down
        went = time.time()
        outage = [went, float("inf")]
        self.outages.append(outage)
        self.cs.stop()
        end = went + down
        while time.time() < end:
            check()
            time.sleep(0.5)
        self.cs.restart()
        up = time.time()
        self.report.restarts += 1
        if self.mode == "stream":  # wait for the milter to say it pulled again
            deadline = up + 90
            back = None
            while back is None and time.time() < deadline:
                back = self._works_again_after(went)
                if back is None:
                    check()
                    time.sleep(0.2)
            outage[1] = back or deadline
        else:
            outage[1] = up

    def _works_again_after(self, since: float) -> float | None:
        for line in self.milter.log().splitlines():
            if "stream pull works again" in line:
                m = _LOG_TIME.match(line)
                if m:
                    t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) \
                        + int(m.group(2)) / 1000.0
                    if t >= since:
                        return t
        return None

    # -- milter side -------------------------------------------------------------------

    def check(self, lapi_up: bool = True) -> None:
        """Every address's verdict against LAPI's truth (the last list while it is down:
        nothing changes it then but expiry, which the list's own durations time)."""
        decisions = self.truth() if lapi_up else self.last_truth
        self.report.rounds += 1
        for address in self.addresses:
            t = time.time()
            if self.mode == "live" and (not lapi_up or self._in_outage(t)):
                self.report.skipped_down += 1
                continue
            answer = verdict(self.milter, address)
            t = (t + time.time()) / 2
            covering = [d for d in decisions if covers(d["value"], address)]
            banned = any((d["expires"] + d["expires_lo"]) / 2 > t for d in covering)
            self.report.comparisons += 1
            self.report.banned_seen += banned
            if (answer == "reject") == banned:
                continue
            age = self._age(address, t)
            entry = Mismatch(t, address, answer, banned, age,
                             [f"{d['id']}:{d['value']}:{d['expires'] - t:+.1f}s"
                              for d in covering])
            excused = self._excused(address, t)
            if excused:
                entry.outage = excused == "outage"
                self.report.outage_excused += entry.outage
                self.report.excused.append(entry)
            else:
                self.report.drift.append(entry)

    def _in_outage(self, t: float) -> bool:
        return any(went <= t <= back for went, back in self.outages)

    def _age(self, address: str, t: float) -> float:
        past = [c for c in self.changes[address] if c <= t + 1.0]
        return t - max(past) if past else float("inf")

    def _excused(self, address: str, t: float) -> str:
        """"window" or "outage" when a mismatch now is excused, "" when it is drift."""
        changes = self.changes[address]
        if any(t - self.window <= c <= t + 1.0 for c in changes):
            return "window"
        for went, back in self.outages:  # a change the milter may not have pulled in time
            if went <= t <= back + self.window and \
                    any(went - self.window <= c <= back for c in changes):
                return "outage"
        return ""

    # -- the run -------------------------------------------------------------------------

    def run(self, seconds: float, restart_every: float, check_every: float = 3.0) -> Report:
        started = time.time()
        next_restart = started + restart_every
        while time.time() - started < seconds:
            for _ in range(self.rnd.randint(1, 3)):
                self.op()
            if time.time() >= next_restart:
                self.restart_lapi(self.rnd.uniform(2.0, 6.0),
                                  lambda: self.check(lapi_up=False))
                next_restart = time.time() + restart_every
            pause = time.time() + self.rnd.uniform(0.0, check_every)
            while time.time() < pause:
                time.sleep(0.05)
            self.check()
        # the end: no more changes; everything must agree once a window has passed
        time.sleep(self.window)
        self.check()
        self.report.seconds = time.time() - started
        return self.report

    def close(self) -> None:
        self.milter.stop()
        self.cs.stop()


def _seconds(duration: str) -> float:
    """A Go duration ("59m58.43s", "3s", "1h0m0s") in seconds."""
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(h|ms|m|s|us|µs|ns)", duration):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6,
                                  "µs": 1e-6, "ns": 1e-9}[unit]
    return -total if duration.startswith("-") else total
