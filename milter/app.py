"""Start-up and shutdown: the settings build the parts, libmilter runs in a worker thread.

libmilter treats SIGTERM, SIGINT and SIGHUP as "stop", and Python signal handlers do not
run while `Milter.runmilter` holds the main thread. So runmilter gets a thread of its own
and the main thread waits for signals: SIGTERM/SIGINT stop everything within seconds,
SIGUSR1 reopens the event log (logrotate).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass

import Milter

from . import __version__
from .events import EventWriter
from .lapi import LapiClient
from .policy import Policy
from .session import SessionContext, session_class
from .settings import Settings
from .source import LiveSource, StreamSource

log = logging.getLogger("crowdsec_milter")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class _OneLine(logging.Formatter):
    """Text log lines that stay one line each, whatever a message carries."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
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


@dataclass
class Parts:
    client: LapiClient
    source: StreamSource | LiveSource
    policy: Policy
    events: EventWriter | None
    context: SessionContext


def build(settings: Settings) -> Parts:
    """Every runtime part, from the settings alone."""
    client = LapiClient(settings.lapi_url, settings.api_key, settings.lapi_timeout)
    source: StreamSource | LiveSource
    if settings.mode == "stream":
        source = StreamSource(client, settings.update_frequency,
                              resync_interval=settings.resync_interval)
    else:
        source = LiveSource(client, settings.cache_ttl, timeout=settings.lapi_timeout,
                            maxsize=settings.cache_size)
    policy = Policy(
        source,
        actions=settings.action_map,
        default_action=settings.default_action,
        replies=settings.replies,
        unavailable_reply=settings.unavailable_reply,
        on_lapi_error=settings.on_lapi_error,
        trusted=settings.trusted_networks,
        dry_run=settings.dry_run,
    )
    events = None
    if settings.event_log != "none":
        events = EventWriter(settings.event_log, maxsize=settings.event_queue)
    context = SessionContext(policy=policy, stage=settings.stage, events=events)
    return Parts(client, source, policy, events, context)


def run(settings: Settings) -> int:
    """Run the milter until SIGTERM or SIGINT; exit status 0, or 1 if libmilter failed."""
    setup_logging(settings.log_level, settings.log_format)
    parts = build(settings)
    log.info("crowdsec-milter %s starting: socket=%s lapi=%s mode=%s stage=%s%s",
             __version__, settings.socket, settings.lapi_url, settings.mode, settings.stage,
             " dry-run" if settings.dry_run else "")
    if parts.events is not None:
        parts.events.start()
    if isinstance(parts.source, StreamSource):
        parts.source.start()

    Milter.factory = session_class(parts.context)
    Milter.set_flags(0)  # we never modify messages
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

    def on_stop(signum: int, _frame: object) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    def on_usr1(_signum: int, _frame: object) -> None:
        if parts.events is not None:
            parts.events.reopen()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, on_usr1)
    thread = threading.Thread(target=serve, name="libmilter", daemon=True)
    thread.start()
    while not stop.is_set() and not done.is_set():
        stop.wait(0.5)
    if not done.is_set():
        Milter.stop()
        done.wait(10.0)
    if isinstance(parts.source, StreamSource):
        parts.source.stop()
    if parts.events is not None:
        parts.events.stop()
    parts.client.close()
    log.info("stopped")
    return 1 if failed.is_set() else 0
