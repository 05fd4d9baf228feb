"""Start-up and shutdown: the settings build the parts, libmilter runs in a worker thread.

libmilter treats SIGTERM, SIGINT and SIGHUP as "stop", and Python signal handlers do not
run while `Milter.runmilter` holds the main thread. So runmilter gets a thread of its own
and the main thread waits for signals: SIGTERM/SIGINT stop everything well within a
second (once the callbacks the MTA already sent have run), SIGUSR1 reopens the event log
(logrotate).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import Milter

from . import __version__
from .guard import IdleGuard, raise_fd_limit
from .notify import Notifier
from .redact import mask_url, scrub
from .session import session_class
from .settings import RESTART_ONLY, ConfigError, Settings
from .wiring import Parts, StartError, build, make_context

log = logging.getLogger("crowdsec_milter")
STOP_GRACE = 0.5  # seconds stop waits at most for commands the MTA already sent
STOP_QUIET = 0.1  # seconds without a callback that mean the MTA's commands are all in

# pymilter's callback methods; wrapped to know when none is running
_CALLBACKS = ("connect", "hello", "envfrom", "envrcpt", "data", "header", "eoh", "body",
              "eom", "abort", "close", "unknown")


class Activity:
    """Callbacks running now and when the last one began. Stop waits until the milter is
    quiet: the MTA does not wait for no-reply callbacks, so commands it sent just before
    the signal may still sit in our sockets, and stopping libmilter then loses their
    events."""

    def __init__(self) -> None:
        # No lock on the message path: list.append and list.pop are atomic in CPython, and
        # so is the store of a float; the length of the list is the number running.
        self._running: list[None] = []
        self._last = time.monotonic()

    def run(self, call: Callable[..., Any], *args: Any) -> Any:
        self._running.append(None)
        self._last = time.monotonic()
        try:
            return call(*args)
        finally:
            self._running.pop()

    def wait_quiet(self, quiet: float, limit: float) -> bool:
        """Wait until no callback runs and none began for `quiet` seconds, at most `limit`
        seconds; True if it got quiet."""
        deadline = time.monotonic() + limit
        while True:
            if not self._running and time.monotonic() - self._last >= quiet:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def tracked(cls: type[Milter.Base], activity: Activity) -> type[Milter.Base]:
    """A subclass of `cls` whose callbacks report to `activity` (pymilter's no-reply and
    no-callback marks, kept as function attributes, are copied by functools.wraps)."""
    attrs: dict[str, Any] = {}
    for name in _CALLBACKS:
        original = getattr(cls, name, None)
        if original is None:
            continue

        def wrapper(self: Any, *args: Any, _original: Any = original) -> Any:
            return activity.run(_original, self, *args)

        attrs[name] = functools.wraps(original)(wrapper)
    return type(cls.__name__, (cls,), attrs)


def stop_libmilter(spec: str) -> None:
    """smfi_stop, without waiting out libmilter's listener: it holds its lock through a
    5 s select on the listening socket and smfi_stop needs that lock. A connection to our
    own socket ends the select; repeated until smfi_stop got its turn."""
    stopped = threading.Event()

    def wake() -> None:
        while not stopped.wait(0.05):
            wake_listener(spec)

    waker = threading.Thread(target=wake, name="stop-waker", daemon=True)
    waker.start()
    try:
        Milter.stop()
    finally:
        stopped.set()
        waker.join(1.0)


def wake_listener(spec: str) -> bool:
    """Connect once to our own libmilter socket, ending the listener's select; True if
    it accepted (so it listens: readiness asks this too)."""
    kind, _, rest = spec.partition(":")
    with contextlib.suppress(OSError, ValueError):
        if kind in ("unix", "local"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(rest)
            return True
        if kind in ("inet", "inet6"):
            port, _, host = rest.partition("@")
            if not host or host in ("0.0.0.0", "::", "[::]"):
                host = "::1" if kind == "inet6" else "127.0.0.1"
            socket.create_connection((host.strip("[]"), int(port)), timeout=0.5).close()
            return True
    return False


class Readiness:
    """systemd's READY=1 once the MTA can be served as configured: the first stream pull
    is done (live mode: at once) and libmilter listens; STATUS= after every pull.

    A first pull that fails also counts as done: the milter then answers as
    --on-lapi-error says, as it would in any later outage, and holding READY back would
    hold Postfix's start (Before=postfix.service) for as long as LAPI is down."""

    def __init__(self, notifier: Notifier, settings: Settings) -> None:
        self.notifier = notifier
        self._settings = settings
        self._lock = threading.Lock()
        self._status = "" if settings.mode == "stream" else \
            "live mode: asking LAPI per client address"
        self.sent = False

    def on_pull(self, applied: bool, held: int) -> None:
        """The puller's hook: remember the status, send it once READY went out."""
        status = f"{held} decision(s) held" if applied else (
            f"LAPI unavailable, {held} decision(s) held; clients get "
            f"--on-lapi-error {self._settings.on_lapi_error}")
        with self._lock:
            self._status = status
            sent = self.sent
        if sent:
            self.notifier.ready(status)

    def poll(self) -> None:
        """From the main loop: send READY=1 once both conditions hold."""
        if self.sent or not self.notifier.enabled:
            return
        with self._lock:
            status = self._status
        if status and wake_listener(self._settings.socket):
            with self._lock:
                self.sent = True
                status = self._status
            self.notifier.ready(status)
            log.info("told systemd: READY (%s)", status)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        if record.exc_info:
            doc["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(doc, ensure_ascii=False)


class _OneLine(logging.Formatter):
    """Text log lines that stay one line each, whatever a message carries."""

    def format(self, record: logging.LogRecord) -> str:
        text = scrub(super().format(record))
        return text.replace("\r", "\\r").replace("\n", "\\n")


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_OneLine("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def reload(parts: Parts, activity: Activity, old: Settings,
           load: Callable[[], Settings]) -> Settings:
    """Re-read the settings with `load` (flags, variables and config file again); apply
    what can change live; keep the old settings when the new ones are bad. Sessions and
    decisions are untouched."""
    try:
        new = load()
    except ConfigError as exc:
        log.error("reload refused, keeping the running config: %s", exc)
        return old
    except Exception as exc:  # whatever the file holds, SIGHUP must not stop the milter
        log.error("reload refused, keeping the running config: %s: %s",
                  type(exc).__name__, exc)
        return old
    ignored = [n for n in RESTART_ONLY if getattr(new, n) != getattr(old, n)]
    if ignored:
        log.warning("reload: %s change(s) need a restart; not applied",
                    ", ".join("--" + n.replace("_", "-") for n in ignored))
    context = make_context(new, parts.source, parts.context.tally, parts.events,
                           parts.source.locate)
    parts.context = context
    parts.policy = context.policy
    # new connections get it; open ones finish as they are
    Milter.factory = tracked(session_class(context), activity)
    logging.getLogger().setLevel(new.log_level.upper())
    log.info("reloaded: stage=%s actions=%s trusted=%d dry_run=%s", new.stage,
             ",".join(f"{k}={v}" for k, v in new.actions), len(new.trusted_networks),
             new.dry_run)
    kept = {n: getattr(old, n) for n in ignored}
    return dataclasses.replace(new, **kept)


def run(settings: Settings, load: Callable[[], Settings]) -> int:
    """Run the milter until SIGTERM or SIGINT; exit status 0, or 1 if libmilter failed or a
    part could not start (a busy metrics port: one log line, no traceback). SIGHUP reads
    new settings with `load` (the caller's own parsing, so this module needs no CLI)."""
    setup_logging(settings.log_level, settings.log_format)
    try:
        parts = build(settings)
    except StartError as exc:
        log.error("cannot start: %s", exc)
        return 1
    raise_fd_limit()
    log.info("crowdsec-milter %s starting: socket=%s lapi=%s mode=%s stage=%s%s",
             __version__, settings.socket, mask_url(settings.lapi_url), settings.mode,
             settings.stage,
             " dry-run" if settings.dry_run else "")
    notifier = Notifier()
    readiness = Readiness(notifier, settings)
    parts.source.on_pull = readiness.on_pull
    parts.start()
    if parts.metrics is not None:
        host = settings.metrics_listen[0]
        log.info("metrics and /health on %s:%d", f"[{host}]" if ":" in host else host,
                 parts.metrics.port)

    activity = Activity()
    Milter.factory = tracked(session_class(parts.context), activity)
    # Only the tag action modifies messages (one added header); Session.negotiate asks the
    # MTA for that one right per connection, and only while some key can give tag.
    Milter.set_flags(Milter.ADDHDRS)
    failed = threading.Event()
    done = threading.Event()

    def serve() -> None:
        try:
            Milter.runmilter("crowdsec-milter", settings.socket, settings.milter_timeout)
        except Exception as exc:
            log.error("libmilter stopped: %s", exc)
            failed.set()
        finally:
            done.set()

    stop = threading.Event()
    hup = threading.Event()

    def on_hup(_signum: int, _frame: object) -> None:
        hup.set()

    def on_stop(signum: int, _frame: object) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    def on_usr1(_signum: int, _frame: object) -> None:
        if parts.events is not None:
            parts.events.reopen()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGUSR1, on_usr1)
    thread = threading.Thread(target=serve, name="libmilter", daemon=True)
    thread.start()
    guard = IdleGuard(settings.socket)
    guard.start()

    def alive() -> bool:
        return thread.is_alive() and parts.source.alive

    notifier.start_watchdog(alive)
    while not stop.is_set() and not done.is_set():
        readiness.poll()
        stop.wait(0.05 if notifier.enabled and not readiness.sent else 0.2)
        if hup.is_set():
            hup.clear()
            settings = reload(parts, activity, settings, load)
    notifier.stopping()
    if not done.is_set():
        # Commands the MTA sent just before the signal may still sit in our sockets (it
        # does not wait for no-reply callbacks): let them run before libmilter stops.
        if not activity.wait_quiet(STOP_QUIET, STOP_GRACE):
            log.info("stopping with callbacks still coming in")
        stop_libmilter(settings.socket)
        done.wait(10.0)
    guard.stop()
    parts.stop()
    notifier.close()
    log.info("stopped")
    return 1 if failed.is_set() else 0
