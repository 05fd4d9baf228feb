"""The frozen settings object the CLI builds and every other part is built from."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .policy import Action, Reply, Stage


@dataclass(frozen=True)
class Settings:
    socket: str = "inet:8895@127.0.0.1"
    lapi_url: str = "http://127.0.0.1:8080/"
    api_key: str = field(default="", repr=False)  # never printed
    config_file: str | None = None
    mode: str = "stream"
    update_frequency: float = 10.0
    resync_interval: float = 3600.0
    cache_ttl: float = 60.0
    cache_size: int = 100_000
    lapi_timeout: float = 2.0
    on_lapi_error: Action = Action.ACCEPT
    actions: tuple[tuple[str, Action], ...] = (("ban", Action.REJECT), ("captcha", Action.TEMPFAIL))
    default_action: Action = Action.REJECT
    stage: Stage = Stage.CONNECT
    reject_reply: Reply = Reply("550", "5.7.1", "%(ip)s is blocked by CrowdSec")
    tempfail_reply: Reply = Reply("451", "4.7.1", "%(ip)s is temporarily blocked by CrowdSec")
    drop_reply: Reply = Reply("421", "4.7.1", "%(ip)s is blocked by CrowdSec, closing connection")
    unavailable_reply: Reply = Reply("451", "4.3.0", "Service temporarily unavailable, try later")
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    dry_run: bool = False
    event_log: str = "/var/log/crowdsec-milter/events.log"
    event_queue: int = 10_000
    always_allow_rcpt: tuple[str, ...] = ("postmaster@*", "abuse@*")
    exempt_authenticated: bool = False
    trap_rcpt: tuple[str, ...] = ()
    metrics_listen: tuple[str, int] | None = None
    usage_metrics_interval: float = 1800.0
    lapi_ca: str | None = None
    lapi_cert: str | None = None
    lapi_key: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    milter_timeout: int = 600

    @property
    def action_map(self) -> dict[str, Action]:
        return dict(self.actions)

    @property
    def replies(self) -> dict[Action, Reply]:
        return {
            Action.REJECT: self.reject_reply,
            Action.TEMPFAIL: self.tempfail_reply,
            Action.DROP: self.drop_reply,
        }
