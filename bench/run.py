"""crowdsec-milter benchmarks: each figure measured side by side in one run, alternating
the configurations, median of several rounds. Prints a table; never asserts a time.

usage: bench/run.py [--smoke] [--only index,pull,live,latency,events,geo,postfix]
Run from the repo with the project's venv: .venv/bin/python bench/run.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))  # the wire client shared with the tests

from common import BenchLapi, decisions, percentile, print_rows, stream_body  # noqa: E402
from ports import free_port, wait_port  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []


def row(figure: str, ours: str, other: str, note: str) -> None:
    ROWS.append((figure, ours, other, note))
    print(f"  {figure}: ours {ours} | other {other} | {note}", flush=True)


def bench_index(n_ip: int, n_range: int, probes: int, rounds: int) -> None:
    from crowdsec_milter.decisions import parse_address, parse_decision
    from crowdsec_milter.index import DecisionIndex

    items = decisions(n_ip, n_range)
    ours = DecisionIndex()
    for item in items:
        parsed = parse_decision(item, time.monotonic())
        assert parsed is not None
        ours.add(*parsed)
    theirs = None
    try:
        from pycrowdsec.cache import Cache

        theirs = Cache()
        for item in items:
            theirs.insert(item["value"], item["type"])
    except ImportError:
        print("  pycrowdsec not installed: peer column left empty")
    rnd = random.Random(3)
    hits = [rnd.choice(items)["value"].split("/")[0] for _ in range(probes // 2)]
    misses = [f"198.18.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}" for _ in range(probes // 2)]
    now = time.monotonic()
    pc = time.perf_counter_ns

    def ours_one(ip: str) -> None:
        key = parse_address(ip)
        # as the milter asks (Policy.check, StreamSource.lookup): stop at the first ban
        ours.lookup(key[0], key[1], now, False, key[2])  # type: ignore[index]

    results: dict[str, dict[str, list[float]]] = {"ours": {}, "peer": {}}
    for _ in range(rounds):
        for name, fn in (("ours", ours_one), ("peer", theirs.get if theirs else None)):
            if fn is None:
                continue
            for kind, ips in (("hit", hits), ("miss", misses)):
                times = []
                for ip in ips:
                    t0 = pc()
                    fn(ip)
                    times.append((pc() - t0) / 1000)
                results[name].setdefault(kind, []).extend(times)
    for kind in ("hit", "miss"):
        o = results["ours"][kind]
        p = results["peer"].get(kind)
        row(f"index lookup {kind}, {n_ip + n_range:,} decisions (median / p99 µs)",
            f"{statistics.median(o):.2f} / {percentile(o, 0.99):.2f}",
            f"{statistics.median(p):.2f} / {percentile(p, 0.99):.2f}" if p else "-",
            "address text to verdict list; peer = pycrowdsec Cache" +
            (f"; ratio {statistics.median(p) / statistics.median(o):.1f}x" if p else ""))


def bench_pull(n_ip: int, n_range: int, rounds: int) -> None:
    lapi = BenchLapi(stream_body(decisions(n_ip, n_range)))
    got: dict[str, list[dict]] = {"ours": [], "pycrowdsec": []}
    for _ in range(rounds):
        for which in got:
            out = subprocess.run([sys.executable, str(HERE / "pull.py"), which, lapi.url],
                                 capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                print(f"  {which} pull failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            got[which].append(json.loads(out.stdout))
    lapi.close()

    def med(which: str, field: str) -> float:
        return statistics.median(r[field] for r in got[which]) if got[which] else float("nan")

    n = n_ip + n_range
    row(f"startup pull to first lookup, {n:,} decisions (s)", f"{med('ours', 'seconds'):.2f}",
        f"{med('pycrowdsec', 'seconds'):.2f}", "LAPI answer served locally")
    row(f"steady RSS for {n:,} decisions (MB)", f"{med('ours', 'steady_mb'):.0f}",
        f"{med('pycrowdsec', 'steady_mb'):.0f}", "RSS after pull minus RSS before")
    row("peak RSS during the pull (MB, x steady)",
        f"{med('ours', 'peak_mb'):.0f} ({med('ours', 'peak_mb') / med('ours', 'steady_mb'):.2f}x)",
        f"{med('pycrowdsec', 'peak_mb'):.0f}", "high-water mark minus RSS before")


def bench_live(sessions: int, addresses: int) -> None:
    from crowdsec_milter.decisions import parse_address
    from crowdsec_milter.lapi import LapiClient
    from crowdsec_milter.source import LiveSource

    lapi = BenchLapi(b"{}")
    source = LiveSource(LapiClient(lapi.url, "bench-key", 2.0), 60.0, timeout=2.0)
    ips = [f"10.{i // 256 % 256}.{i % 256}.1" for i in range(addresses)]
    order = [ips[i % addresses] for i in range(sessions)]
    random.Random(5).shuffle(order)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not order:
                    return
                ip = order.pop()
            key = parse_address(ip)
            source.lookup(key[0], key[1], ip)  # type: ignore[index]

    threads = [threading.Thread(target=worker) for _ in range(32)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Requests the milter sent (a timed-out one counts, and so does its retry), beside those
    # the bench LAPI answered.
    row(f"live mode: LAPI requests for {sessions:,} sessions from {addresses:,} addresses",
        f"{source.stats().requests:,}", f"{sessions:,} (no cache)",
        f"32 threads, --cache-ttl 60, {time.monotonic() - started:.1f} s; LAPI answered "
        f"{lapi.live_requests:,}; failed: {sum(source.stats().errors.values())}")
    lapi.close()


def bench_latency(n_decisions: int, sessions: int, rounds: int) -> None:
    """Connect to last reply through the milter protocol, crowdsec-milter as a bouncer
    (--event-log none), against a do-nothing pymilter milter doing the same work: a REJECT
    at connect for the banned client, an ACCEPT at connect for the clean one."""
    from milter_process import Mta
    from miltertest import constants as mc
    from postfix_bench import wait_healthy

    items = decisions(n_decisions, 0)
    banned = items[0]["value"]
    lapi = BenchLapi(stream_body(items))
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    key = tmp / "key"
    key.write_text("bench-key")
    key.chmod(0o600)
    exe = str(Path(sys.executable).parent / "crowdsec-milter")
    ours_port, same_port, reject_port, health = (free_port() for _ in range(4))
    procs = [
        subprocess.Popen([exe, "--socket", f"inet:{ours_port}@127.0.0.1", "--lapi-url",
                          lapi.url, "--api-key-file", str(key), "--event-log", "none",
                          "--metrics-listen", f"127.0.0.1:{health}", "--log-level", "warning"]),
        subprocess.Popen([sys.executable, str(HERE / "noop_milter.py"),
                          f"inet:{same_port}@127.0.0.1", "accept"]),
        subprocess.Popen([sys.executable, str(HERE / "noop_milter.py"),
                          f"inet:{reject_port}@127.0.0.1", "reject"]),
    ]
    try:
        for port in (ours_port, same_port, reject_port):
            wait_port(port)
        wait_healthy(health)  # the startup pull is done

        def session(port: int, ip: str) -> float:
            t0 = time.perf_counter()
            mta = Mta(port)
            verdict = mta.connect(ip)[0]
            if verdict in ("continue", "noreply"):
                # only the steps the milter asked for, as an MTA does
                skip = mta.conn.protocol_flags
                if not skip & mc.SMFIP_NOHELO:
                    mta.helo("client.example")
                if not skip & mc.SMFIP_NOMAIL:
                    mta.mail("<a@example.net>")
                if not skip & mc.SMFIP_NORCPT:
                    mta.rcpt("<bob@example.org>", {"{mail_addr}": "a@example.net"})
                if not skip & mc.SMFIP_NODATA:
                    mta.data()
            elapsed = time.perf_counter() - t0
            mta.close()
            return elapsed * 1000

        for label, ip, peer, what in (
                ("hit (banned)", banned, reject_port, "REJECT at connect"),
                ("miss (clean)", "192.0.2.1", same_port, "ACCEPT at connect")):
            res: dict[int, list[float]] = {ours_port: [], peer: []}
            for _ in range(rounds):
                for port in (ours_port, peer):
                    res[port].extend(session(port, ip) for _ in range(sessions))
            o, n = res[ours_port], res[peer]
            row(f"per-session latency, {label} (p50 / p99 ms)",
                f"{statistics.median(o):.3f} / {percentile(o, 0.99):.3f}",
                f"{statistics.median(n):.3f} / {percentile(n, 0.99):.3f}",
                f"other = do-nothing pymilter, same work ({what}); p99 added "
                f"{percentile(o, 0.99) - percentile(n, 0.99):+.3f} ms")
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        lapi.close()


def bench_events(lines: int, rounds: int) -> None:
    """Event formatting: the work a milter thread does per event line (the writer thread
    only writes). Peer: a bare json.dumps of the same fields, the floor for any JSON line."""
    from crowdsec_milter.events import format_event

    blocked = {"client_ip": "203.0.113.7", "client_name": "unknown", "helo": "evil.example",
               "mail_from": "<a@example.net>", "rcpt": "", "stage": "connect",
               "action": "reject", "enforced": True, "reason": "decision",
               "decision_type": "ban", "decision_scope": "Ip", "decision_value": "203.0.113.7",
               "scenario": "crowdsecurity/postfix-spam", "origin": "crowdsec",
               "mta": "mx1.example.org"}
    rejected = {"client_ip": "198.51.100.7", "client_name": "probe.example",
                "helo": "probe", "mail_from": "<x@example.net>",
                "rcpt": "<guess1@example.org>", "status": "5.1.1",
                "reason": "Recipient address rejected: User unknown in local recipient table",
                "queue_id": "", "mta": "mx1.example.org"}
    hostile = {**rejected, "helo": "é\u2028" + "x" * 600,
               "rcpt": '<x","client_ip":"6.6.6.6@example.org>'}
    cases = [("client_blocked", blocked), ("rcpt_rejected", rejected),
             ("rcpt_rejected", hostile)]
    pc = time.perf_counter_ns
    now = time.time  # as EventWriter.emit stamps each line
    ours: dict[str, list[float]] = {}
    floor: dict[str, list[float]] = {}
    for _ in range(rounds):
        for (name, fields), label in zip(cases, ("blocked", "rejected", "hostile"), strict=True):
            t0 = pc()
            for _ in range(lines):
                format_event(name, fields, now())
            ours.setdefault(label, []).append((pc() - t0) / lines / 1000)
            t0 = pc()
            for _ in range(lines):
                json.dumps({"time": "", "event": name, **fields}, ensure_ascii=False,
                           separators=(",", ":"))
            floor.setdefault(label, []).append((pc() - t0) / lines / 1000)

    def med(got: dict[str, list[float]]) -> str:
        return " / ".join(f"{statistics.median(v):.2f}" for v in got.values())

    row("event formatting, client_blocked / rcpt_rejected / hostile (median µs a line)",
        med(ours), med(floor),
        "format_event, as a milter thread calls it; other = bare json.dumps of the same fields")

def bench_geo(n_decisions: int, n_networks: int, probes: int, rounds: int) -> None:
    """Per-session decision cost (Policy.check, address text to verdict) with both MaxMind
    databases against Ip and Range only, same index: hits (banned address), misses
    (clean address, hot: the LRU knows it) and cold misses (every address new to the LRU,
    so both databases are read)."""
    from crowdsec_milter.geo import Geo
    from crowdsec_milter.lapi import LapiClient
    from crowdsec_milter.policy import Action, Policy, Reply
    from crowdsec_milter.source import StreamSource
    from mmdb import write

    items = decisions(n_decisions, n_decisions // 20)
    items += [{"id": 10**9 + i, "type": "ban", "scope": scope, "value": value,
               "duration": "4h", "origin": "cscli", "scenario": "geo"}
              for i, (scope, value) in enumerate((("Country", "KP"), ("AS", "64499")))]
    rnd = random.Random(5)
    networks = {f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.0/24":
                (rnd.choice(("FR", "DE", "US", "BR", "CN", "KP")), rnd.randint(1, 65000))
                for _ in range(n_networks)}
    folder = Path(tempfile.mkdtemp(prefix="bench-geo-"))
    country_db, asn_db = write(folder, networks)
    lapi = BenchLapi(stream_body(items))
    reply = Reply("550", "5.7.1", "%(ip)s blocked")
    policies = {}
    for name, geo in (("ip-only", None), ("both dbs", Geo(str(country_db), str(asn_db)))):
        source = StreamSource(LapiClient(lapi.url, "bench-key", 30.0), 60.0, geo=geo)
        assert source.pull_once()
        policies[name] = Policy(source, actions={"ban": Action.REJECT},
                                default_action=Action.REJECT,
                                replies={Action.REJECT: reply, Action.TEMPFAIL: reply,
                                         Action.DROP: reply},
                                unavailable_reply=reply, on_lapi_error=Action.ACCEPT)
    lapi.close()
    shutil.rmtree(folder)  # the readers keep their maps
    hits = [rnd.choice(items[:n_decisions])["value"] for _ in range(probes)]
    hot = [f"198.18.{rnd.randint(0, 3)}.{rnd.randint(0, 255)}" for _ in range(probes)]
    cold = [f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}."
            f"{rnd.randint(1, 254)}" for _ in range(probes)]
    pc = time.perf_counter_ns
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, policy in policies.items():
            for kind, ips in (("hit", hits), ("miss, hot", hot), ("miss, cold", cold)):
                if kind == "miss, cold" and policy.source._geo is not None:  # type: ignore[attr-defined]
                    policy.source._geo.cache_clear()  # type: ignore[attr-defined]
                times = []
                for ip in ips:
                    t0 = pc()
                    policy.check(ip)
                    times.append((pc() - t0) / 1000)
                results.setdefault((name, kind), []).extend(times)
    for kind in ("hit", "miss, hot", "miss, cold"):
        geo = statistics.median(results[("both dbs", kind)])
        plain = statistics.median(results[("ip-only", kind)])
        row(f"per-session check with Country+AS databases, {kind} (median µs)",
            f"{geo:.2f} (p99 {percentile(results[('both dbs', kind)], 0.99):.2f})",
            f"{plain:.2f} (Ip/Range only)",
            f"ratio {geo / plain:.2f}x; Policy.check, {n_decisions:,} Ip decisions, "
            f"{n_networks:,} networks per database, LRU 4096")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves the scripts run")
    parser.add_argument("--only", default="index,pull,live,latency,events,geo,postfix")
    args = parser.parse_args()
    only = set(args.only.split(","))
    big = not args.smoke
    print(f"crowdsec-milter benchmarks on {os.cpu_count()} cores, "
          f"{'full' if big else 'smoke'} sizes", flush=True)
    if "index" in only:
        bench_index(1_000_000 if big else 5_000, 50_000 if big else 500,
                    100_000 if big else 2_000, 3 if big else 1)
    if "pull" in only:
        bench_pull(1_000_000 if big else 5_000, 50_000 if big else 500, 3 if big else 1)
    if "live" in only:
        bench_live(10_000 if big else 500, 1_000 if big else 50)
    if "latency" in only:
        bench_latency(100_000 if big else 1_000, 500 if big else 20, 3 if big else 1)
    if "events" in only:
        bench_events(20_000 if big else 500, 7 if big else 1)
    if "geo" in only:
        bench_geo(100_000 if big else 2_000, 20_000 if big else 200,
                  20_000 if big else 500, 5 if big else 1)
    if "postfix" in only:
        try:
            from postfix_bench import bench_postfix
        except ImportError as exc:
            print(f"  postfix throughput: not available ({exc})")
        else:
            bench_postfix(ROWS, smoke=not big)
    print_rows(ROWS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
