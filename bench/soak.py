"""Soak: crowdsec-milter under steady load for a while; RSS, threads and open files sampled.

usage: bench/soak.py [--seconds 600] [--mode stream|live]
Prints one line per sample and a verdict line; exit 1 when RSS or threads grew after the
first fifth of the run (warm-up) by more than the allowance. Live mode is run with a cache
smaller than the number of distinct client addresses, so the cache bound is exercised.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))

from common import BlobLapi, decisions, stream_body  # noqa: E402
from milter_process import Mta, free_port  # noqa: E402


def sample(pid: int) -> tuple[int, int, int]:
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) // 1024, int(fields["Threads"]),
            len(os.listdir(f"/proc/{pid}/fd")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--mode", choices=("stream", "live"), default="stream")
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    items = decisions(100_000, 1_000)
    banned = [d["value"] for d in items[:1000] if "/" not in d["value"]]
    lapi = BlobLapi(stream_body(items))
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    key = work / "key"
    key.write_text("bench-key")
    key.chmod(0o600)
    port = free_port()
    exe = str(Path(sys.executable).parent / "crowdsec-milter")
    proc = subprocess.Popen([exe, "--socket", f"inet:{port}@127.0.0.1", "--lapi-url", lapi.url,
                             "--api-key-file", str(key), "--mode", args.mode, "--cache-size",
                             "1000", "--event-log", str(work / "events.log"),
                             "--log-level", "warning"], stderr=subprocess.DEVNULL)
    time.sleep(3)
    stop = threading.Event()
    sessions = [0]

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            ip = rnd.choice(banned) if rnd.random() < 0.2 else \
                f"10.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
            try:
                mta = Mta(port)
                if mta.connect(ip)[0] in ("continue", "noreply"):
                    mta.helo("soak")
                    mta.mail("<a@b>")
                    mta.conn.send_macro("R", **{"{rcpt_mailer}": "error", "{rcpt_host}": "5.1.1",
                                                "{rcpt_addr}": "User unknown"})
                    mta.rcpt("<x@example.org>")
                    mta.data()
                mta.close()
                sessions[0] += 1
            except OSError:
                time.sleep(0.01)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.workers)]
    for t in threads:
        t.start()
    started = time.monotonic()
    samples = []
    step = max(args.seconds / 20, 2)
    try:
        while time.monotonic() - started < args.seconds:
            time.sleep(step)
            rss, nthreads, fds = sample(proc.pid)
            samples.append((rss, nthreads, fds))
            print(f"t={time.monotonic() - started:6.0f}s sessions={sessions[0]:8d} "
                  f"rss={rss}MB threads={nthreads} fds={fds}", flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join()
        proc.send_signal(signal.SIGKILL)
        lapi.close()
    warm = samples[max(1, len(samples) // 5) - 1]
    peak_rss = max(s[0] for s in samples[len(samples) // 5:])
    peak_threads = max(s[1] for s in samples[len(samples) // 5:])
    ok = peak_rss <= warm[0] + 16 and peak_threads <= warm[1] + args.workers + 4
    print(f"verdict: {'flat' if ok else 'GROWING'}: rss {warm[0]} -> max {peak_rss} MB, "
          f"threads {warm[1]} -> max {peak_threads}, {sessions[0]} sessions in "
          f"{args.seconds:.0f} s ({args.mode} mode)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
