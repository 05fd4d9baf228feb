"""What a milter costs a real Postfix: milter CPU, system calls and context switches per
message, and throughput against no milter, for crowdsec-milter beside its floors.

Configurations, each on its own smtpd listener of one Postfix (same queue, cleanup, qmgr):
  none              no milter
  C accept          libmilter, ACCEPT at connect (bench/floor_milter.c)
  C same protocol   libmilter, exactly crowdsec-milter's protocol, no work (floor_milter.c)
  py same protocol  pymilter, the same protocol, no work (bench/noop_milter.py)
  crowdsec-milter   stream mode, 100k decisions, event log on (the sensor)
  crowdsec bouncer  the same with --event-log none
Both load shapes of smtp-source: -d (20 connections, many messages each) and a new
connection per message; 1 accepted + 1 rejected recipient a message, discard transport.

Before anything is timed: every milter is synced (crowdsec-milter's /health) and every
listener gives the right verdicts through XCLIENT (a banned address rejected by
crowdsec-milter, a clean one accepted everywhere). Each configuration is warmed up; the
order of the configurations rotates every round. A round measures CPU (the process CPU
clock of the milter, all threads, exited ones included) and wall-clock; a second pass in
the same round counts system calls and context switches with `perf stat` (or `strace -c`),
which slows the milter, so its time is never used.

Raw samples can be written with BENCH_JSON=FILE and several runs pooled with
`bench/postfix_bench.py --pool FILE...`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "integration"))
sys.path.insert(1, str(HERE.parent / "tests"))  # ports, shared with the tests

from common import BenchLapi, decisions, print_rows, stream_body  # noqa: E402
from ports import free_port, wait_port  # noqa: E402

CONFIGS = ("none", "C accept", "C same protocol", "py same protocol", "crowdsec-milter",
           "crowdsec bouncer")
SHAPES = ("-d", "conn")
SHAPE_TEXT = {"-d": "-d (20 connections, many messages each)",
              "conn": "a new connection per message"}


def our_protocol() -> tuple[int, str]:
    """The protocol steps (SMFIP_* bits asked for) and RCPT macros of crowdsec-milter in the
    sensor configuration the bench runs (stage connect, events on), from its own code, for
    an MTA offering every action (Postfix does)."""
    from crowdsec_milter.policy import Stage
    from crowdsec_milter.protocol import request

    req = request(Stage.CONNECT, sensor=True)
    return req.steps, req.rcpt_macros


def build_floor(work: Path) -> Path | None:
    """bench/floor_milter.c compiled against libmilter, or None (and why) if it cannot be."""
    out = work / "floor_milter"
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None or not Path("/usr/include/libmilter/mfapi.h").exists():
        print("  C floors: no compiler or no libmilter-dev (integration/setup.sh installs them)")
        return None
    done = subprocess.run([cc, "-O2", "-o", str(out), str(HERE / "floor_milter.c"),
                           "-lmilter", "-lpthread"], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  C floors: build failed: {done.stderr.strip()[-500:]}")
        return None
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time of the whole process, every thread including the exited ones (the clock
    /proc/PID/stat counts in 10 ms ticks, here in nanoseconds)."""
    return time.clock_gettime(((~pid) << 3) | 2)  # clock_getcpuclockid(pid)


def task_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of the process's live threads."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def wait_healthy(port: int, timeout: float = 120.0) -> None:
    """Until crowdsec-milter's /health says its decisions are loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"crowdsec-milter on metrics port {port} never became healthy")


def counting_tool() -> str:
    if shutil.which("perf"):
        probe = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter",
                                "true"], capture_output=True, text=True)
        if probe.returncode == 0 and "not supported" not in probe.stderr:
            return "perf"
    return "strace" if shutil.which("strace") else ""


def start_counting(tool: str, pid: int, out: Path) -> subprocess.Popen[bytes]:
    if tool == "perf":
        cmd = ["perf", "stat", "-x,", "-o", str(out), "-e",
               "raw_syscalls:sys_enter,context-switches,task-clock", "-p", str(pid)]
    else:
        cmd = ["strace", "-c", "-f", "-o", str(out), "-p", str(pid)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached to every thread before the load starts
    return proc


def stop_counting(tool: str, proc: subprocess.Popen[bytes], out: Path) -> dict[str, float]:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    text = out.read_text()
    got: dict[str, float] = {}
    if tool == "perf":
        for line in text.splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                got[parts[2]] = float(parts[0])
        return {"syscalls": got.get("raw_syscalls:sys_enter", float("nan")),
                "switches": got.get("context-switches", float("nan"))}
    m = re.search(r"^-+.*\n\s*[\d.]+\s+[\d.]+\s+\d*\s+(\d+)\s+\d*\s*total", text, re.M)
    return {"syscalls": float(m.group(1)) if m else float("nan"), "switches": float("nan")}


def load(port: int, shape: str, sessions: int, messages: int) -> float:
    """One smtp-source run; its wall-clock seconds."""
    flags = ["-d"] if shape == "-d" else []
    started = time.monotonic()
    subprocess.run(["smtp-source", "-A", *flags, "-s", str(sessions), "-m", str(messages),
                    "-r", "2", "-f", "sender@example.net", "-t", "bob@example.org",
                    f"127.0.0.1:{port}"], check=True, timeout=600, capture_output=True)
    return time.monotonic() - started


def check_verdicts(ports: dict[str, int], banned: str) -> None:
    """A clean client is accepted by every listener; the banned one is refused by both
    crowdsec-milter configurations (before any figure is taken)."""
    from real_postfix import session

    for name, port in ports.items():
        clean = session(port, "192.0.2.10", rcpts=["bob@example.org"])
        if clean.code("<message>") != 250:
            raise RuntimeError(f"{name}: clean client not accepted:\n{clean.text()}")
        if name.startswith("crowdsec"):
            bad = session(port, banned, rcpts=["bob@example.org"])
            if bad.code("MAIL") is None or bad.code("MAIL") // 100 != 5:
                raise RuntimeError(f"{name}: banned {banned} not rejected:\n{bad.text()}")


def run_once(smoke: bool) -> list[dict[str, Any]]:
    """One full run (its own Postfix and milters); the raw samples."""
    rounds = 1 if smoke else int(os.environ.get("BENCH_ROUNDS", "5"))
    messages, sessions = (200, 10) if smoke else (3000, 20)
    count_messages = 200 if smoke else 1000
    base = os.environ.get("BENCH_QUEUE_DIR") or None
    work = Path(tempfile.mkdtemp(prefix="bench-postfix-", dir=base))
    items = decisions(1_000 if smoke else 100_000, 0)
    banned = next(d["value"] for d in items if ":" not in d["value"])
    lapi = BenchLapi(stream_body(items))
    key = work / "key"
    key.write_text("bench-key")
    key.chmod(0o600)
    exe = str(Path(sys.executable).parent / "crowdsec-milter")
    floor = build_floor(work)
    wanted, macros = our_protocol()
    mport = {name: free_port() for name in CONFIGS[1:]}
    health = {"crowdsec-milter": free_port(), "crowdsec bouncer": free_port()}

    def ours(name: str, event_log: str) -> list[str]:
        # loopback is not trusted here, or the load tool's sessions would skip the lookup
        return [exe, "--socket", f"inet:{mport[name]}@127.0.0.1", "--lapi-url", lapi.url,
                "--api-key-file", str(key), "--trusted-network", "192.0.2.255/32",
                "--event-log", event_log, "--metrics-listen", f"127.0.0.1:{health[name]}",
                "--log-level", "warning"]

    commands: dict[str, list[str]] = {
        "py same protocol": [sys.executable, str(HERE / "noop_milter.py"),
                             f"inet:{mport['py same protocol']}@127.0.0.1", f"{wanted:x}",
                             *([macros] if macros else [])],
        "crowdsec-milter": ours("crowdsec-milter", str(work / "events.log")),
        "crowdsec bouncer": ours("crowdsec bouncer", "none"),
    }
    if floor is not None:
        commands["C accept"] = [str(floor), f"inet:{mport['C accept']}@127.0.0.1", "accept"]
        commands["C same protocol"] = [str(floor), f"inet:{mport['C same protocol']}@127.0.0.1",
                                       f"{wanted:x}", *([macros] if macros else [])]
    configs = ["none", *[c for c in CONFIGS[1:] if c in commands]]
    procs = {name: subprocess.Popen(cmd) for name, cmd in commands.items()}
    print(f"  crowdsec-milter asks for protocol steps {wanted:#x}"
          f"{', RCPT macros ' + macros if macros else ''}; the same-protocol floors too",
          flush=True)
    from real_postfix import LOCAL_USERS, Postfix

    users = ", ".join(f"{u}=ok" for u in (*LOCAL_USERS, "1bob"))  # 2bob stays unknown
    listen = {name: free_port() for name in configs[1:]}
    pf = Postfix(work / "pf", None, extra={"local_recipient_maps": f"inline:{{{users}}}"},
                 services={listen[n]: f"inet:127.0.0.1:{mport[n]}" for n in listen})
    tool = counting_tool()
    samples: list[dict[str, Any]] = []
    try:
        for name in commands:
            wait_port(mport[name])
        for name in health:
            wait_healthy(health[name])
        pf.start()
        ports = {"none": pf.port, **listen}
        check_verdicts(ports, banned)
        for shape in SHAPES:  # warm-up: threads, caches, Postfix's processes
            for name in configs:
                load(ports[name], shape, sessions, messages // 4)
        for r in range(rounds):
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for shape in SHAPES:
                for name in order:
                    pid = procs[name].pid if name in procs else None
                    cpu0 = cpu_seconds(pid) if pid else 0.0
                    sw0 = task_switches(pid) if pid else 0
                    wall = load(ports[name], shape, sessions, messages)
                    sample = {"round": r, "shape": shape, "config": name, "wall": wall,
                              "messages": messages, "sessions": sessions}
                    if pid:
                        sample["cpu"] = cpu_seconds(pid) - cpu0
                        sample["task_switches"] = task_switches(pid) - sw0
                    samples.append(sample)
                if not tool:
                    continue
                for name in order:  # the counting pass: its times are not used
                    if name not in procs:
                        continue
                    out = work / "count.txt"
                    counter = start_counting(tool, procs[name].pid, out)
                    load(ports[name], shape, sessions, count_messages)
                    got = stop_counting(tool, counter, out)
                    samples.append({"round": r, "shape": shape, "config": name,
                                    "counted": tool, "messages": count_messages, **got})
            print(f"  round {r + 1}/{rounds} done", flush=True)
        events = (work / "events.log").read_text().count("\n")
        print(f"  (crowdsec-milter wrote {events} event lines)")
    finally:
        pf.stop()
        for p in procs.values():
            p.send_signal(signal.SIGKILL)
            p.wait()
        lapi.close()
        shutil.rmtree(work, ignore_errors=True)
    return samples


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """median [min-max]"""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return (f"{fmt.format(statistics.median(values))} "
            f"[{fmt.format(min(values))}-{fmt.format(max(values))}]")


def summarize(samples: list[dict[str, Any]], rows: list, runs: int = 1) -> None:
    """Rows of medians and ranges over every round of every run pooled."""
    timed = [s for s in samples if "wall" in s]
    counted = [s for s in samples if "counted" in s]
    rounds = len({(s.get("run", 0), s["round"]) for s in timed})
    for shape in SHAPES:
        by_round: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
        for s in timed:
            if s["shape"] == shape:
                by_round.setdefault((s.get("run", 0), s["round"]), {})[s["config"]] = s
        for name in CONFIGS:
            mine = [rd[name] for rd in by_round.values() if name in rd]
            if not mine:
                continue
            ratio = [rd["none"]["wall"] / rd[name]["wall"] for rd in by_round.values()
                     if name in rd and "none" in rd]
            cpu = [s["cpu"] / s["messages"] * 1e6 for s in mine if "cpu" in s]
            vs_c = [rd[name]["cpu"] / rd["C same protocol"]["cpu"] for rd in by_round.values()
                    if name in rd and "cpu" in rd[name] and "C same protocol" in rd
                    and rd["C same protocol"]["cpu"] > 0]
            cnt = [s for s in counted if s["shape"] == shape and s["config"] == name]
            sysc = [s["syscalls"] / s["messages"] for s in cnt]
            sw = [s["switches"] / s["messages"] for s in cnt if s["switches"] == s["switches"]]
            tsw = [s["task_switches"] / s["messages"] for s in mine if "task_switches" in s]
            note = (f"smtp-source -s {mine[0]['sessions']} -m {mine[0]['messages']} -r 2, "
                    f"{rounds} rounds in {runs} run(s); median [range]")
            if name == "none":
                walls = [s["wall"] for s in mine]
                rows.append((f"Postfix, {SHAPE_TEXT[shape]}: no milter, seconds", "-",
                             spread(walls, "{:.2f}"), note))
                continue
            ours = name.startswith("crowdsec")
            cells = (f"throughput vs none {spread(ratio, '{:.2f}')}; CPU/msg "
                     f"{spread(cpu, '{:.1f}')} µs"
                     + (f" ({spread(vs_c, '{:.2f}')}x C same protocol)" if ours and vs_c else "")
                     + f"; syscalls/msg {spread(sysc, '{:.1f}')}"
                     + f"; ctx switches/msg {spread(sw, '{:.2f}')}"
                     + (f" (live threads {spread(tsw, '{:.2f}')})" if tsw else ""))
            rows.append((f"Postfix throughput vs no milter, {SHAPE_TEXT[shape]}: {name}",
                         cells if ours else "-", "-" if ours else cells, note))
    for figure, ours_v, other_v, note in rows[-len(CONFIGS) * len(SHAPES):]:
        print(f"  {figure}: ours {ours_v} | other {other_v} | {note}", flush=True)


def bench_postfix(rows: list, smoke: bool = False) -> None:
    samples = run_once(smoke)
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(json.dumps(samples))
    summarize(samples, rows)


def main() -> int:
    """--pool FILE...: one table from the raw samples of several runs."""
    if sys.argv[1:2] != ["--pool"] or len(sys.argv) < 3:
        print("usage: postfix_bench.py --pool FILE...", file=sys.stderr)
        return 2
    samples: list[dict[str, Any]] = []
    for i, name in enumerate(sys.argv[2:]):
        samples += [{**s, "run": i} for s in json.loads(Path(name).read_text())]
    rows: list = []
    summarize(samples, rows, runs=len(sys.argv) - 2)
    print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
