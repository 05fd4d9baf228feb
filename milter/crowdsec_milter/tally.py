"""Thread-safe counters that the session and policy bump and the metrics read."""

from __future__ import annotations

import threading
from collections import Counter


class Tally:
    """A Counter with a lock: libmilter calls us from many threads at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, ...]] = Counter()

    def inc(self, *key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> dict[tuple[str, ...], int]:
        with self._lock:
            return dict(self._counts)
