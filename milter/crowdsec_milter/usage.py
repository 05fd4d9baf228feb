"""Remediation usage metrics pushed to LAPI (`POST /v1/usage-metrics`, CrowdSec 1.6.3+),
as CrowdSec's own bouncers do, so `cscli metrics` shows what the milter blocked.

Older LAPIs answer 404: one info line, then silence until restart.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from typing import Any

from . import __version__
from .lapi import LapiClient, LapiError
from .source import Source
from .tally import Key, Tally

log = logging.getLogger("crowdsec_milter.usage")

# Actions that refuse the client: what CrowdSec's usage metrics call `dropped`. A client let
# through (exempt after SMTP AUTH, tagged, log only, dry run) was not.
REFUSED = frozenset({"reject", "tempfail", "drop"})


def build_payload(tally_now: dict[Key, int], tally_before: dict[Key, int],
                  active: int, startup: int, window: int, now: int) -> dict[str, Any]:
    """The usage-metrics document for one window (pure, for tests)."""
    items: list[dict[str, Any]] = []
    dropped: dict[tuple[str, str], int] = {}
    processed = 0
    for key, value in tally_now.items():
        delta = value - tally_before.get(key, 0)
        if key.kind == "blocked" and key.action in REFUSED and delta:
            label = (key.origin or "unknown", key.type or "unknown")
            dropped[label] = dropped.get(label, 0) + delta
        elif key.kind == "sessions":
            processed += delta
    for (origin, remediation), n in sorted(dropped.items()):
        items.append({"name": "dropped", "value": n, "unit": "request",
                      "labels": {"origin": origin, "remediation": remediation}})
    items.append({"name": "processed", "value": processed, "unit": "request"})
    items.append({"name": "active_decisions", "value": active, "unit": "ip"})
    return {
        "remediation_components": [{
            "type": "crowdsec-milter",
            "version": __version__,
            "utc_startup_timestamp": startup,
            "os": {"name": platform.system().lower(), "version": platform.release()},
            "feature_flags": [],
            "metrics": [{"meta": {"window_size_seconds": window, "utc_now_timestamp": now},
                         "items": items}],
        }]
    }


class UsagePusher:
    """Pushes a window of counts every `interval` seconds in a thread of its own."""

    def __init__(self, client: LapiClient, tally: Tally, source: Source,
                 interval: float = 1800.0) -> None:
        self._client = client
        self._tally = tally
        self._source = source
        self._interval = interval
        self._startup = int(time.time())
        self._before: dict[Key, int] = {}
        self._stop = threading.Event()
        self.unsupported = False

    def push_once(self) -> bool:
        now = int(time.time())
        snap = self._tally.snapshot()
        active = self._source.stats().active
        payload = build_payload(snap, self._before, active, self._startup,
                                int(self._interval), now)
        try:
            status = self._client.post_json("v1/usage-metrics", payload)
        except LapiError as exc:
            log.debug("usage metrics not pushed: %s", exc)
            return False
        if status == 404:
            log.info("LAPI has no usage-metrics endpoint (CrowdSec < 1.6.3); not pushing")
            self.unsupported = True
            return False
        if status not in (200, 201):
            log.warning("usage metrics refused by LAPI: HTTP %d", status)
            return False
        self._before = snap
        return True

    def run(self) -> None:
        while not self._stop.wait(self._interval):
            if self.push_once() is False and self.unsupported:
                return

    def start(self) -> None:
        threading.Thread(target=self.run, name="usage-metrics", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
