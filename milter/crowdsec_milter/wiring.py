"""The settings to the runtime parts: the one place that knows which setting goes where.

The milter (app.py), its SIGHUP reload and the operator tools (tools.py) all build their
parts here, so a setting means the same thing to each of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .events import EventWriter
from .geo import Geo
from .lapi import LapiClient
from .metrics import MetricsServer, MilterCollector
from .policy import DecisionSource, Policy
from .session import SessionContext
from .settings import Settings
from .source import LiveSource, Source, StreamSource
from .state import StateFile
from .tally import Tally
from .usage import UsagePusher


class StartError(Exception):
    """A part that cannot start (the metrics port is taken); the message names it."""


@dataclass
class Parts:
    """Everything the running milter holds; `context` and `policy` change on SIGHUP."""

    client: LapiClient
    source: Source
    policy: Policy
    events: EventWriter | None
    context: SessionContext
    metrics: MetricsServer | None = None
    usage: UsagePusher | None = None

    def _threads(self) -> list[EventWriter | Source | UsagePusher | MetricsServer]:
        """The parts with threads of their own, in the order they start."""
        return [p for p in (self.events, self.source, self.usage, self.metrics) if p is not None]

    def start(self) -> None:
        for part in self._threads():
            part.start()

    def stop(self) -> None:
        """Stop every thread, the last started first, then close the LAPI client."""
        for part in reversed(self._threads()):
            part.stop()
        self.client.close()


def make_client(settings: Settings) -> LapiClient:
    cert = (settings.lapi_cert, settings.lapi_key) if settings.lapi_cert else None
    return LapiClient(settings.lapi_url, settings.api_key or None, settings.lapi_timeout,
                      verify=settings.lapi_ca or True, cert=cert)  # type: ignore[arg-type]


def make_geo(settings: Settings) -> Geo | None:
    """The MaxMind databases given, memory-mapped; None without any."""
    if not (settings.geoip_country_db or settings.geoip_asn_db):
        return None
    return Geo(settings.geoip_country_db, settings.geoip_asn_db)


def make_source(settings: Settings, client: LapiClient) -> Source:
    geo = make_geo(settings)
    if settings.mode == "stream":
        state = StateFile(settings.state_file) if settings.state_file else None
        return StreamSource(client, settings.update_frequency,
                            resync_interval=settings.resync_interval, geo=geo,
                            accounts=settings.account_decisions, widest=settings.widest_range,
                            state=state)
    return LiveSource(client, settings.cache_ttl, timeout=settings.lapi_timeout,
                      maxsize=settings.cache_size, geo=geo, widest=settings.widest_range,
                      accounts=settings.account_decisions)


def make_policy(settings: Settings, source: DecisionSource, tally: Tally | None = None) -> Policy:
    return Policy(
        source,
        actions=settings.action_map,
        default_action=settings.default_action,
        replies=settings.replies,
        unavailable_reply=settings.unavailable_reply,
        on_lapi_error=settings.on_lapi_error,
        trusted=settings.trusted_networks,
        dry_run=settings.dry_run,
        tally=tally,
        selection=settings.selection,
        account_text=settings.account_reply,
    )


def make_context(settings: Settings, source: DecisionSource, tally: Tally,
                 events: EventWriter | None,
                 locate: Callable[[str], tuple[str, str]] | None = None) -> SessionContext:
    """What sessions are handed: built at start and again by each SIGHUP reload."""
    return SessionContext(policy=make_policy(settings, source, tally), stage=settings.stage,
                          events=events, tally=tally,
                          always_allow_rcpt=settings.always_allow_rcpt,
                          exempt_authenticated=settings.exempt_authenticated,
                          trap_rcpt=settings.trap_rcpt, tag_header=settings.tag_header,
                          local_domains=settings.local_domains,
                          fanout_limit=settings.fanout_limit,
                          fanout_domains=settings.fanout_domains, locate=locate,
                          accounts=settings.account_decisions)


def build(settings: Settings) -> Parts:
    """Every runtime part, from the settings alone; StartError when one cannot start."""
    client = make_client(settings)
    source = make_source(settings, client)
    tally = Tally()
    events = None
    if settings.event_log != "none":
        events = EventWriter(settings.event_log, maxsize=settings.event_queue)
    context = make_context(settings, source, tally, events, source.locate)
    metrics = None
    if settings.metrics_listen is not None:
        host, port = settings.metrics_listen
        try:
            metrics = MetricsServer(host, port, MilterCollector(tally, source, events),
                                    lambda: source.usable)
        except OSError as exc:  # a busy port, an address this host does not have
            client.close()
            shown = f"[{host}]" if ":" in host else host
            raise StartError(f"--metrics-listen {shown}:{port}: cannot listen: "
                             f"{exc.strerror or exc}") from exc
    usage = None
    if settings.usage_metrics_interval > 0:
        usage = UsagePusher(client, tally, source, settings.usage_metrics_interval)
    return Parts(client, source, context.policy, events, context, metrics, usage)
