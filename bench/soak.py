"""Soak: crowdsec-milter under steady load for a while; RSS, threads and open files sampled,
and every session's verdict checked.

usage: bench/soak.py [--seconds 600] [--mode stream|live]
Prints one line per sample and a verdict line; exit 1 when RSS or threads grew after the
first fifth of the run (warm-up) by more than the allowance, when any session failed (a
banned client not rejected, a clean one not accepted, a socket error or timeout), when no
session ran, or (live mode) when the cache held more than --cache-size answers. Live mode
runs with a cache smaller than the number of distinct client addresses, so the bound is
exercised; the bench LAPI answers each banned address with its decisions there too.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))

from common import BenchLapi, decisions, stream_body  # noqa: E402
from milter_process import Mta, metric  # noqa: E402
from ports import free_port  # noqa: E402

CACHE_SIZE = 1000
CLEAN = ipaddress.ip_network("10.0.0.0/8")  # clients drawn from here have no decision


def sample(pid: int) -> tuple[int, int, int]:
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) // 1024, int(fields["Threads"]),
            len(os.listdir(f"/proc/{pid}/fd")))


def outside_clean(item: dict[str, Any]) -> bool:
    """True unless the decision covers part of CLEAN (those are left out of the set)."""
    net = ipaddress.ip_network(item["value"], strict=False)
    return net.version != 4 or not net.overlaps(CLEAN)


class Tally:
    """Sessions and failures counted across the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.banned = 0
        self.clean = 0
        self.failures = 0
        self.first_failure = ""

    def ok(self, banned: bool) -> None:
        with self.lock:
            if banned:
                self.banned += 1
            else:
                self.clean += 1

    def failed(self, what: str) -> None:
        with self.lock:
            self.failures += 1
            self.first_failure = self.first_failure or what


def session(port: int, ip: str, banned: bool) -> str:
    """One SMTP session as Postfix would drive it; "" when the milter answered as it must,
    else what went wrong."""
    mta = Mta(port)
    try:
        verdict, text = mta.connect(ip)
        if banned:
            return "" if verdict == "reject" else f"banned {ip} got {verdict} {text}"
        if verdict != "continue":
            return f"clean {ip} got {verdict} {text} at connect"
        mta.helo("soak")
        mta.mail("<a@b>")
        mta.conn.send_macro("R", **{"{rcpt_mailer}": "error", "{rcpt_host}": "5.1.1",
                                    "{rcpt_addr}": "User unknown"})
        mta.rcpt("<x@example.org>")
        verdict, text = mta.data()
        return "" if verdict == "accept" else f"clean {ip} got {verdict} {text} at DATA"
    finally:
        mta.close()


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def value(text: str, name: str) -> float:
    """A metric's total; 0 when it has no sample (a labelled counter nothing bumped)."""
    try:
        return metric(text, name)
    except AssertionError:
        return 0.0


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until /health says the decisions are usable (stream: first pull done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"milter exited {proc.returncode} at start")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("milter not healthy after 60 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--mode", choices=("stream", "live"), default="stream")
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    items = [d for d in decisions(100_000, 1_000) if outside_clean(d)]
    # the milter never looks up its trusted networks (127.0.0.0/8, ::1 by default)
    banned = [d["value"] for d in items[:1000] if d["scope"] == "Ip"
              and not ipaddress.ip_address(d["value"]).is_loopback]
    live = {d["value"]: [d] for d in items if d["scope"] == "Ip"}
    lapi = BenchLapi(stream_body(items), live=live)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    key = work / "key"
    key.write_text("bench-key")
    key.chmod(0o600)
    port, mport = free_port(), free_port()
    exe = str(Path(sys.executable).parent / "crowdsec-milter")
    proc = subprocess.Popen([exe, "--socket", f"inet:{port}@127.0.0.1", "--lapi-url", lapi.url,
                             "--api-key-file", str(key), "--mode", args.mode, "--cache-size",
                             str(CACHE_SIZE), "--event-log", str(work / "events.log"),
                             "--metrics-listen", f"127.0.0.1:{mport}",
                             "--log-level", "warning"], stderr=subprocess.DEVNULL)
    wait_healthy(mport, proc)
    stop = threading.Event()
    tally = Tally()

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            is_banned = rnd.random() < 0.2
            ip = rnd.choice(banned) if is_banned else \
                f"10.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
            try:
                wrong = session(port, ip, is_banned)
            except Exception as exc:  # socket errors, timeouts, protocol errors: all count
                wrong = f"{ip}: {exc.__class__.__name__}: {exc}"
            if wrong:
                tally.failed(wrong)
                time.sleep(0.01)  # a dead milter must not turn this into a busy loop
            else:
                tally.ok(is_banned)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.workers)]
    for t in threads:
        t.start()
    started = time.monotonic()
    samples = []
    cache_peak = 0.0
    step = max(args.seconds / 20, 2)
    try:
        while time.monotonic() - started < args.seconds:
            time.sleep(step)  # the sampling period, not a wait for anything
            rss, nthreads, fds = sample(proc.pid)
            samples.append((rss, nthreads, fds))
            cache = ""
            if args.mode == "live":
                held = value(scrape(mport), "crowdsec_milter_cache_entries")
                cache_peak = max(cache_peak, held)
                cache = f" cache={held:.0f}/{CACHE_SIZE}"
            print(f"t={time.monotonic() - started:6.0f}s sessions={tally.banned + tally.clean:8d} "
                  f"failures={tally.failures} rss={rss}MB threads={nthreads} fds={fds}{cache}",
                  flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join()
        text = scrape(mport) if proc.poll() is None else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lapi.close()
    problems = []
    warm = samples[max(1, len(samples) // 5) - 1]
    peak_rss = max(s[0] for s in samples[len(samples) // 5:])
    peak_threads = max(s[1] for s in samples[len(samples) // 5:])
    flat = peak_rss <= warm[0] + 16 and peak_threads <= warm[1] + args.workers + 4
    if not flat:
        problems.append("GROWING")
    if tally.failures:
        problems.append(f"{tally.failures} failed sessions, first: {tally.first_failure}")
    if not (tally.banned and tally.clean):
        problems.append(f"too few sessions ran: {tally.banned} banned, {tally.clean} clean")
    if not text:
        problems.append("milter died")
    else:
        blocks = value(text, "crowdsec_milter_blocks_total")
        if blocks != tally.banned:  # the milter's own count agrees with what clients saw
            problems.append(f"milter counted {blocks:.0f} blocks, clients {tally.banned}")
        if args.mode == "live":
            cache_peak = max(cache_peak, value(text, "crowdsec_milter_cache_entries"))
            if not 0 < cache_peak <= CACHE_SIZE:
                problems.append(f"live cache held {cache_peak:.0f} (--cache-size {CACHE_SIZE})")
            if value(text, "crowdsec_milter_lapi_requests_total") == 0:
                problems.append("live mode never asked LAPI")
    cache = f", live cache max {cache_peak:.0f}/{CACHE_SIZE}" if args.mode == "live" else ""
    print(f"verdict: {'flat' if flat else 'GROWING'}: rss {warm[0]} -> max {peak_rss} MB, "
          f"threads {warm[1]} -> max {peak_threads}, {tally.banned + tally.clean} sessions "
          f"({tally.banned} banned rejected, {tally.clean} clean accepted), "
          f"failures={tally.failures}{cache} in {args.seconds:.0f} s ({args.mode} mode)")
    if problems:
        print("FAILED: " + "; ".join(problems))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
