"""The frozen settings object the CLI builds and every other part is built from.

Each setting says here whether SIGHUP can change it (`restart_only`): the reload, the
example config file and the systemd unit all take that list from `RESTART_ONLY`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from .decisions import WIDEST_RANGE
from .policy import Action, Reply, Stage
from .selection import Selection


class ConfigError(Exception):
    """A setting that cannot be used; the message names it."""


def _restart(default: Any, **kw: Any) -> Any:
    """A setting SIGHUP cannot change: the parts built from it (socket, LAPI client, key,
    source, event writer, metrics server, usage pusher) live as long as the process."""
    return field(default=default, metadata={"restart_only": True}, **kw)


@dataclass(frozen=True)
class Settings:
    socket: str = _restart("inet:8895@127.0.0.1")
    lapi_url: str = _restart("http://127.0.0.1:8080/")
    api_key: str = _restart("", repr=False)  # never printed
    mode: str = _restart("stream")
    update_frequency: float = _restart(10.0)
    resync_interval: float = _restart(3600.0)
    # stream mode: the last good decisions, enforced at start until a pull works; "" off
    state_file: str = _restart("/var/lib/crowdsec-milter/decisions.state")
    cache_ttl: float = _restart(60.0)
    cache_size: int = _restart(100_000)
    lapi_timeout: float = _restart(2.0)
    on_lapi_error: Action = Action.ACCEPT
    actions: tuple[tuple[str, Action], ...] = (("ban", Action.REJECT), ("captcha", Action.TEMPFAIL))
    default_action: Action = Action.REJECT
    origins: tuple[str, ...] | None = None  # None: every origin
    scenarios_containing: tuple[str, ...] = ()
    scenarios_not_containing: tuple[str, ...] = ()
    tag_header: str = "X-CrowdSec-Decision"
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
    event_log: str = _restart("/var/log/crowdsec-milter/events.log")
    event_queue: int = 10_000
    always_allow_rcpt: tuple[str, ...] = ("postmaster@*", "abuse@*")
    exempt_authenticated: bool = False
    trap_rcpt: tuple[str, ...] = ()
    local_domains: frozenset[str] = frozenset()
    # conservative: a list server's message to 50 of one site's users, or to 5 sites, is
    # rare from an unauthenticated client; a spammer's fan-out is not
    fanout_limit: int = 50
    fanout_domains: int = 5
    # decisions on logins (scope username), checked at MAIL; the source asks LAPI for them
    account_decisions: bool = _restart(False)
    account_reply: str = ("account %(user)s is locked by CrowdSec: if it is yours, "
                          "contact the postmaster")
    metrics_listen: tuple[str, int] | None = _restart(None)
    usage_metrics_interval: float = _restart(1800.0)
    lapi_ca: str | None = _restart(None)
    lapi_cert: str | None = _restart(None)
    lapi_key: str | None = _restart(None)
    geoip_country_db: str | None = _restart(None)  # the source is built with them
    geoip_asn_db: str | None = _restart(None)
    widest_range: tuple[int, int] = _restart(WIDEST_RANGE)  # decisions are sorted as read
    log_level: str = "info"
    log_format: str = "text"
    milter_timeout: int = 600

    @property
    def action_map(self) -> dict[str, Action]:
        return dict(self.actions)

    @property
    def selection(self) -> Selection:
        return Selection.of(self.origins, self.scenarios_containing,
                            self.scenarios_not_containing)

    @property
    def replies(self) -> dict[Action, Reply]:
        return {
            Action.REJECT: self.reject_reply,
            Action.TEMPFAIL: self.tempfail_reply,
            Action.DROP: self.drop_reply,
        }


# The settings that need a restart, in declaration order; SIGHUP applies all the others.
RESTART_ONLY: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Settings) if f.metadata.get("restart_only"))
