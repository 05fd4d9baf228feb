"""systemd's readiness protocol (sd_notify), so `Type=notify` units start Postfix only once
the decisions are loaded.

It is one datagram to the socket named by NOTIFY_SOCKET: the standard library does it, so no
dependency (python-systemd would need libsystemd's headers to build). Without NOTIFY_SOCKET
every call is a no-op, as under `Type=simple`, docker or a terminal.

The socket is non-blocking: a NOTIFY_SOCKET whose reader takes nothing costs the message
(counted, and logged at most once a minute), never a stuck start, watchdog or stop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("crowdsec_milter.notify")
REPORT_EVERY = 60.0  # seconds between two warnings about messages nobody took


class Notifier:
    """Sends READY=1, STATUS=..., STOPPING=1 and the watchdog's WATCHDOG=1 to systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is spelled with a leading '@'.
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self.watchdog_interval = _watchdog_interval(env)
        self._ready = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self._reported = 0
        self._last_report = -REPORT_EVERY

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """One datagram of `KEY=VALUE` lines; False (logged at debug) if it could not go."""
        if self._sock is None:
            return False
        text = "\n".join(f.replace("\n", " ") for f in fields)
        try:
            with self._lock:
                self._sock.sendto(text.encode("utf-8", "replace"), self._address)
        except BlockingIOError:
            self._dropped(fields)
            return False
        except OSError as exc:
            log.debug("sd_notify to %r failed: %s", self._address, exc)
            return False
        return True

    def _dropped(self, fields: tuple[str, ...]) -> None:
        """Count a message the socket's full queue refused; warn at most once a minute."""
        with self._lock:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_report < REPORT_EVERY:
                return
            count, self._reported, self._last_report = \
                self.dropped - self._reported, self.dropped, now
        log.warning("sd_notify: NOTIFY_SOCKET %r takes nothing (its queue is full); %d "
                    "message(s) dropped (last: %s)", self._address.replace("\0", "@"), count,
                    ", ".join(f.partition("=")[0] for f in fields))

    def ready(self, status: str) -> None:
        """READY=1 the first time, STATUS= every time."""
        if not self._ready:
            self._ready = True
            self.send("READY=1", f"STATUS={status}")
        else:
            self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self._stop.set()
        self.send("STOPPING=1", "STATUS=stopping")

    def start_watchdog(self, alive: Callable[[], bool]) -> None:
        """Pet the watchdog every half interval, only while `alive()` says the milter works:
        a wedged libmilter or puller then gets the unit restarted."""
        if self._sock is None or not self.watchdog_interval:
            return
        every = self.watchdog_interval / 2

        def loop() -> None:
            while not self._stop.wait(every):
                if alive():
                    self.send("WATCHDOG=1")
                else:
                    log.warning("watchdog not petted: libmilter or the puller is not running")

        self._thread = threading.Thread(target=loop, name="watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float:
    """Seconds from WATCHDOG_USEC, 0 when unset, bad, or meant for another process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return 0.0
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return 0.0
    return usec / 1e6 if usec > 0 else 0.0
