"""Thread-safe counters that the session and policy bump and the metrics read."""

from __future__ import annotations

import threading
from collections import Counter
from typing import NamedTuple


class Key(NamedTuple):
    """What one count is of. `kind` says which count; the other fields label it and stay
    empty where they do not apply."""

    # "sessions", "lookup", "blocked", "account_blocked", "rcpt_rejected", "rcpt_trap" or
    # "error"
    kind: str
    # lookup: clean, match, unavailable; rcpt_rejected: 4xx, 5xx, unknown; rcpt_trap:
    # accepted, rejected
    result: str = ""
    type: str = ""  # blocked: the decision's type, or the reason when there is no decision
    origin: str = ""  # blocked: the decision's origin
    stage: str = ""  # blocked: where the client was answered
    # blocked: the action carried out, "none" when not (dry run, accept), "exempt" for an
    # authenticated client let through
    action: str = ""


SESSIONS = Key("sessions")
ERRORS = Key("error")
LOOKUP_CLEAN = Key("lookup", "clean")
LOOKUP_MATCH = Key("lookup", "match")
LOOKUP_UNAVAILABLE = Key("lookup", "unavailable")


def blocked(dtype: str, origin: str, stage: str, action: str) -> Key:
    return Key("blocked", type=dtype, origin=origin, stage=stage, action=action)


def account_blocked(dtype: str, origin: str, action: str) -> Key:
    """A login refused (or only logged) because of a decision on it."""
    return Key("account_blocked", type=dtype, origin=origin, stage="mail", action=action)


def rcpt_rejected(status: str) -> Key:
    return Key("rcpt_rejected", status)


def rcpt_trap(answer: str) -> Key:
    return Key("rcpt_trap", answer)


class Tally:
    """A Counter with a lock: libmilter calls us from many threads at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[Key] = Counter()

    def inc(self, key: Key, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> dict[Key, int]:
        with self._lock:
            return dict(self._counts)
