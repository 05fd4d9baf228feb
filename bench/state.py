"""The state file (--state-file) at blocklist sizes: how long a write and a load take, how
big the file is, and how long lookups in another thread stall while it is written.

    .venv/bin/python bench/state.py               # 1,000,000 Ip + 50,000 Range decisions
    .venv/bin/python bench/state.py --smoke       # tiny: proves the script works

Prints the figures; asserts nothing about speed (targets live in README, not in tests).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import decisions
from crowdsec_milter.decisions import parse_address
from crowdsec_milter.index import DecisionIndex
from crowdsec_milter.source import _add, _Counter
from crowdsec_milter.state import StateFile


def build(n_ip: int, n_range: int) -> tuple[DecisionIndex, list[str]]:
    """An index as a startup pull leaves it, and some addresses it bans."""
    items = decisions(n_ip, n_range)
    index = DecisionIndex(private=True)
    count = _Counter()
    now = time.monotonic()
    for item in items:
        _add(item, now, index, count)
    index.publish()
    banned = [d["value"] for d in items[:2000] if d["scope"] == "Ip"]
    return index, banned


def stall_while(work, index: DecisionIndex, addresses: list[str]) -> tuple[float, int]:
    """Run `work` while another thread looks addresses up without pause; the longest gap
    between two lookups in ms (the GIL handed back and forth), and lookups made."""
    keys = [parse_address(a) for a in addresses]
    stop = threading.Event()
    gaps: list[float] = []
    made = [0]

    def reader() -> None:
        last = time.perf_counter()
        worst = 0.0
        n = 0
        while not stop.is_set():
            family, number, text = keys[n % len(keys)]  # type: ignore[misc]
            index.lookup(family, number, time.monotonic(), False, text)
            t = time.perf_counter()
            worst = max(worst, t - last)
            last = t
            n += 1
        gaps.append(worst)
        made[0] = n

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.2)
    work()
    stop.set()
    thread.join()
    return gaps[0] * 1000.0, made[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n_ip, n_range = (2000, 100) if args.smoke else (1_000_000, 50_000)
    rounds = 2 if args.smoke else args.rounds
    started = time.perf_counter()
    index, banned = build(n_ip, n_range)
    print(f"index of {len(index):,} decisions built in {time.perf_counter() - started:.1f} s")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as folder:
        path = str(Path(folder) / "decisions.state")
        state = StateFile(path)
        writes, loads = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            assert state.save(index, [])
            writes.append(time.perf_counter() - t)
            t = time.perf_counter()
            loaded = state.load()
            loads.append(time.perf_counter() - t)
            assert loaded is not None and len(loaded.index) == len(index)
        size = Path(path).stat().st_size
        stall, made = stall_while(lambda: state.save(index, []), index, banned)
        quiet, quiet_made = stall_while(lambda: time.sleep(max(writes)), index, banned)
        hits = sum(1 for a in banned if loaded.index.lookup(*parse_address(a)[:2],  # type: ignore[index]
                                                            time.monotonic()))
    print(f"decisions: {len(index):,} ({n_ip:,} Ip, {n_range:,} Range)")
    print(f"file: {size / 1e6:.1f} MB ({size / len(index):.1f} bytes a decision)")
    print(f"write (encode + write + fsync + rename), median of {rounds}: "
          f"{statistics.median(writes):.2f} s (min {min(writes):.2f}, max {max(writes):.2f})")
    print(f"load (read + check + rebuild the index), median of {rounds}: "
          f"{statistics.median(loads):.2f} s (min {min(loads):.2f}, max {max(loads):.2f})")
    print(f"lookups in another thread during a write: longest gap {stall:.1f} ms "
          f"({made:,} lookups); without a write: {quiet:.1f} ms ({quiet_made:,})")
    print(f"banned addresses found after a load: {hits}/{len(banned)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
