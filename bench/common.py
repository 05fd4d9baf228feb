"""Shared pieces of the benchmarks: decision sets, a LAPI with prepared answers, RSS
readings."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

# the tests' LAPI server and loopback ports serve the benchmarks too
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

from lapi_server import FakeLapi, serve, stop


def decisions(n_ip: int, n_range: int, seed: int = 7) -> list[dict[str, Any]]:
    """n_ip Ip decisions (90% IPv4) and n_range Range decisions (v4 /16-/28, v6 /32-/64),
    shaped like a community blocklist: few scenarios, durations with fractions."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    scenarios = ["crowdsecurity/ssh-bf", "crowdsecurity/postfix-spam",
                 "crowdsecurity/http-probing", "crowdsec-milter/dictionary-attack"]
    for i in range(n_ip):
        if rnd.random() < 0.9:
            value = ".".join(str(rnd.randint(1, 254)) for _ in range(4))
        else:
            a, b, c = (rnd.getrandbits(16) for _ in range(3))
            value = f"2001:db8:{a:x}:{b:x}::{c:x}"
        out.append(_d(i, "Ip", value, rnd, scenarios))
    for j in range(n_range):
        if rnd.random() < 0.8:
            plen = rnd.randint(16, 28)
            base = rnd.getrandbits(32) >> (32 - plen) << (32 - plen)
            value = f"{base >> 24}.{base >> 16 & 255}.{base >> 8 & 255}.{base & 255}/{plen}"
        else:
            value = f"2001:db8:{rnd.getrandbits(16):x}::/48"
        out.append(_d(n_ip + j, "Range", value, rnd, scenarios))
    return out


def _d(i: int, scope: str, value: str, rnd: random.Random, scenarios: list[str]) -> dict:
    return {"id": i + 1, "origin": "CAPI", "type": "ban", "scope": scope, "value": value,
            "duration": f"{rnd.randint(1, 167)}h{rnd.randint(0, 59)}m{rnd.random() * 60:.3f}s",
            "scenario": rnd.choice(scenarios), "simulated": False}


def stream_body(items: list[dict[str, Any]]) -> bytes:
    return json.dumps({"deleted": None, "new": items}).encode()


class BenchLapi:
    """The tests' LAPI server (tests/lapi_server.py) with prepared answers and key
    bench-key: `body` is the whole startup stream answer; `live` maps an address to the
    decisions a `?ip=` lookup of it gets (any other address gets `null`, no decision), so
    give every address the caller expects to be banned."""

    def __init__(self, body: bytes, live: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.lapi = FakeLapi(key="bench-key", startup_body=body, keep_requests=False)
        self.lapi.prepare_ip_answers(live or {})
        self.server, self.url = serve(self.lapi)

    @property
    def live_requests(self) -> int:
        """`?ip=` lookups answered so far."""
        return self.lapi.count("/v1/decisions")

    def close(self) -> None:
        stop(self.lapi, self.server)


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 1e6


def peak_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e3
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_rows(rows: list) -> None:
    """The bench's results as one Markdown table (figure, ours, the other, how)."""
    print("\n| figure | crowdsec-milter | other | how |\n|---|---|---|---|")
    for figure, ours, other, note in rows:
        print(f"| {figure} | {ours} | {other} | {note} |")
