"""Throughput through a real Postfix: smtp-source (Postfix's own load tool), many parallel
sessions, a new connection per message with one accepted and one rejected recipient, discard
transport. No milter vs crowdsec-milter (stream mode, 100k decisions) vs a do-nothing
pymilter milter that keeps every callback. Rounds alternate the three; medians are reported.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

from common import BenchLapi, decisions, stream_body  # noqa: E402
from ports import free_port, wait_port  # noqa: E402
from real_postfix import LOCAL_USERS, Postfix  # noqa: E402


def bench_postfix(rows: list, smoke: bool = False) -> None:
    rounds = 1 if smoke else int(os.environ.get("BENCH_ROUNDS", "5"))
    messages, sessions = (200, 10) if smoke else (3000, 20)
    # The queue on disk, as on a real server. On this VM the host's fsync latency moved the
    # no-milter baseline between 2.9 and 5.3 s from one run to the next; BENCH_QUEUE_DIR=
    # /dev/shm puts the queue on tmpfs, where runs are steadier and the milter's share of
    # the time is larger (the ratios come out lower, not higher).
    base = os.environ.get("BENCH_QUEUE_DIR") or None
    work = Path(tempfile.mkdtemp(prefix="bench-postfix-", dir=base))
    lapi = BenchLapi(stream_body(decisions(1_000 if smoke else 100_000, 0)))
    key = work / "key"
    key.write_text("bench-key")
    key.chmod(0o600)
    exe = str(Path(sys.executable).parent / "crowdsec-milter")
    ours_port, noop_port, floor_port = free_port(), free_port(), free_port()
    procs = [
        # loopback must not be trusted here, or the load tool's sessions would skip the lookup
        subprocess.Popen([exe, "--socket", f"inet:{ours_port}@127.0.0.1", "--lapi-url",
                          lapi.url, "--api-key-file", str(key), "--trusted-network",
                          "192.0.2.255/32", "--event-log",
                          os.environ.get("BENCH_EVENT_LOG", str(work / "events.log")),
                          "--log-level", "warning"]),
        subprocess.Popen([sys.executable, str(HERE / "noop_milter.py"),
                          f"inet:{noop_port}@127.0.0.1"]),
        subprocess.Popen([sys.executable, str(HERE / "noop_milter.py"),
                          f"inet:{floor_port}@127.0.0.1", "accept"]),
    ]
    users = ", ".join(f"{u}=ok" for u in (*LOCAL_USERS, "1bob"))  # 2bob stays unknown
    extra = {"local_recipient_maps": f"inline:{{{users}}}"}
    ports = {name: free_port() for name in ("crowdsec-milter", "do-nothing milter",
                                              "accept-at-connect milter")}
    milters = {"crowdsec-milter": f"inet:127.0.0.1:{ours_port}",
               "do-nothing milter": f"inet:127.0.0.1:{noop_port}",
               "accept-at-connect milter": f"inet:127.0.0.1:{floor_port}"}
    # One Postfix, one listener per configuration: the same queue, cleanup and qmgr serve
    # all of them, so only the milter differs between the runs compared.
    pf = Postfix(work / "pf", None, extra=extra,
                 services={ports[n]: milters[n] for n in ports})
    configs = {"none": None, **{n: None for n in ports}}
    try:
        wait_port(ours_port)
        wait_port(noop_port)
        wait_port(floor_port)
        pf.start()
        targets = {"none": pf.port, **ports}
        time.sleep(2.0)  # the startup pull of 100k decisions
        for persist in (False, True):
            flags = ["-d"] if persist else []
            how = (f"-d: {sessions} connections, many messages each (as in shared/FACTS.md)"
                   if persist
                   else "a new connection per message")
            times: dict[str, list[float]] = {name: [] for name in configs}
            for _ in range(rounds):
                for name in configs:
                    started = time.monotonic()
                    subprocess.run(["smtp-source", "-A", *flags, "-s", str(sessions), "-m",
                                    str(messages), "-r", "2", "-f", "sender@example.net", "-t",
                                    "bob@example.org", f"127.0.0.1:{targets[name]}"],
                                   check=True, timeout=600, capture_output=True)
                    times[name].append(time.monotonic() - started)
            base = statistics.median(times["none"])
            for name in list(configs)[1:]:
                t = statistics.median(times[name])
                ours = name == "crowdsec-milter"
                rows.append((f"Postfix throughput vs no milter, {how}: {name}",
                             f"{base / t:.2f}" if ours else "-",
                             f"{base / t:.2f}" if not ours else "-",
                             f"smtp-source -s {sessions} -m {messages} -r 2 (1 accepted + 1 "
                             f"rejected rcpt); median {t:.2f} s vs {base:.2f} s, {rounds} rounds"))
                figure, ours_v, other_v, note = rows[-1]
                print(f"  {figure}: ours {ours_v} | other {other_v} | {note}", flush=True)
        events = (work / "events.log").read_text().count("\n")
        print(f"  (crowdsec-milter wrote {events} rcpt_rejected event lines)")
    finally:
        pf.stop()
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        lapi.close()
        shutil.rmtree(work, ignore_errors=True)
