"""Reliability on real software: LAPI killed and restarted under load, LAPI down at start,
a hanging LAPI in live mode, MTAs that drop the milter connection, thousands of sessions at
once. Mail keeps flowing as --on-lapi-error says, decisions survive, nothing leaks."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from lapi_server import FakeLapi, Fault, serve
from milter_process import MilterProcess, Mta
from ports import free_port
from real_crowdsec import CrowdSec
from waiting import eventually

pytestmark = pytest.mark.integration


def threads_and_rss(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0])


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def verdict(proc: MilterProcess, ip: str) -> str:
    mta = Mta(proc.port)
    try:
        return mta.connect(ip)[0]
    finally:
        mta.close()


def test_lapi_killed_under_load_then_restarted(tmp_path: Path) -> None:
    cs = CrowdSec(tmp_path / "cs").start()
    key = cs.add_bouncer("milter")
    cs.add_decision(ip="203.0.113.50", duration="1h")
    cs.add_decision(ip="203.0.113.51", duration="6s")
    proc = MilterProcess(tmp_path, cs.lapi_url, key, "--update-frequency", "0.5").start()
    try:
        assert verdict(proc, "203.0.113.50") == "reject"
        results: list[str] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def load() -> None:
            """Sessions until stopped; an exception is kept for the test to assert on (a
            thread that just died would leave only a warning)."""
            try:
                while not stop.is_set():
                    results.append(verdict(proc, "192.0.2.10"))
            except BaseException as exc:  # any kind: the test reports it
                failures.append(exc)

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        cs.stop(kill=True)  # SIGKILL under load
        assert eventually(lambda: "stream pull failed (connect)" in proc.log()), proc.log()
        assert verdict(proc, "203.0.113.50") == "reject"  # last good decisions kept
        # expires by its own 6 s duration while LAPI is still down
        assert eventually(lambda: verdict(proc, "203.0.113.51") == "continue", timeout=20)
        cs.restart()
        cs.add_decision(ip="203.0.113.52")
        # the puller backs off up to a minute, then resyncs
        assert eventually(lambda: verdict(proc, "203.0.113.52") == "reject", timeout=75,
                          step=0.5), proc.log()[-2000:]
        stop.set()
        for w in workers:
            w.join()
        assert failures == [], failures
        assert "stream pull works again" in proc.log()
        assert set(results) == {"continue"} and len(results) > 100
    finally:
        proc.stop(signal.SIGKILL)
        cs.stop()


@pytest.mark.parametrize(("on_error", "expected"), [("accept", "continue"),
                                                    ("tempfail", "tempfail")])
def test_lapi_down_at_start(tmp_path: Path, on_error: str, expected: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    proc = MilterProcess(tmp_path, url, "k", "--on-lapi-error", on_error).start(
        "stream pull failed")
    try:
        assert verdict(proc, "203.0.113.60") == expected
        assert verdict(proc, "127.0.0.1") == "continue"  # trusted whatever happens
    finally:
        proc.stop(signal.SIGKILL)


def test_live_mode_never_waits_longer_than_the_timeout(tmp_path: Path) -> None:
    lapi = FakeLapi()
    server, url = serve(lapi)
    lapi.fault = Fault(hang=True)
    proc = MilterProcess(tmp_path, url, lapi.key, "--mode", "live", "--lapi-timeout", "0.5",
                         "--on-lapi-error", "tempfail").start(None)
    try:
        waits = []
        for i in range(5):
            started = time.monotonic()
            assert verdict(proc, f"203.0.113.{70 + i}") == "tempfail"
            waits.append(time.monotonic() - started)
        # the bound is the configured timeout plus scheduling slack, not a speed target
        assert max(waits) < 0.5 + 1.0, waits
    finally:
        lapi._stopping.set()
        proc.stop(signal.SIGKILL)
        server.shutdown()


def test_mta_drops_mid_session_and_thousands_of_sessions_at_once(tmp_path: Path) -> None:
    lapi = FakeLapi()
    server, url = serve(lapi)
    lapi.add("203.0.113.80")
    proc = MilterProcess(tmp_path, url, lapi.key, "--log-level", "info").start()
    assert proc.proc is not None
    pid = proc.proc.pid
    try:
        verdict(proc, "192.0.2.1")
        time.sleep(0.5)
        base_threads, base_rss = threads_and_rss(pid)
        base_fds = open_fds(pid)
        # MTAs that vanish: after negotiation, after connect, in the middle of a packet
        for cut in range(300):
            if cut % 3:
                s = Mta(proc.port).sock  # negotiated as Postfix would
                if cut % 3 == 2:
                    s.sendall(b"\x00\x00\x00\x40C")  # a header promising more than comes
            else:
                s = socket.create_connection(("127.0.0.1", proc.port))
            s.close()
        # 2000 sessions open at once (more than a Postfix would hold), each answered
        conns = [Mta(proc.port) for _ in range(2000)]
        answers = [m.connect("203.0.113.80" if i % 2 else "192.0.2.2")[0]
                   for i, m in enumerate(conns)]
        assert answers.count("reject") == 1000 and answers.count("continue") == 1000
        for m in conns:
            m.close()
        assert verdict(proc, "203.0.113.80") == "reject"
        eventually(lambda: threads_and_rss(pid)[0] <= base_threads + 2
                   and open_fds(pid) <= base_fds + 2, timeout=20, step=0.5)
        threads, rss = threads_and_rss(pid)
        assert threads <= base_threads + 2, (base_threads, threads)
        assert open_fds(pid) <= base_fds + 2
        assert rss < base_rss + 64 * 1024, (base_rss, rss)  # kB: no per-session residue
        assert "Traceback" not in proc.log()
    finally:
        proc.stop(signal.SIGKILL)
        lapi._stopping.set()
        server.shutdown()
