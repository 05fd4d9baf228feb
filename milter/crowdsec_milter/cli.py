"""The command line: flags, `CROWDSEC_MILTER_*` variables and a config file, to Settings.

Every option exists in all three forms (configargparse). Anything wrong stops start-up with
one line naming the option and exit status 2, never a traceback.
"""

from __future__ import annotations

import grp
import io
import os
import pwd
import re
import stat
import sys
import urllib.parse
from collections.abc import Sequence
from typing import NoReturn

import configargparse
import httpx

from . import __version__
from .lapi import header_safe
from .policy import REPLY_LIMIT, Action, Reply, Stage, parse_networks, wire_size
from .redact import MASK, mask_url, remember, scrub
from .settings import ConfigError, Settings

PROG = "crowdsec-milter"
ENV_PREFIX = "CROWDSEC_MILTER_"
_SOCKET = re.compile(r"^(?:(inet6?):(\d{1,5})(?:@(\S+))?|(?:unix|local):(/\S+))$")
_LEVELS = ("debug", "info", "warning", "error")
CONFIG_LIMIT = 1 << 20  # bytes; a config file is a few lines

# What each command is for, shown by its own --help.
_COMMANDS = {
    None: ("CrowdSec bouncer and sensor for Postfix and Sendmail (a milter).",
           "commands (each has its own --help): "
           "`crowdsec-milter check [options]` tests LAPI and the key; "
           "`crowdsec-milter lookup IP [options]` shows what the milter would answer IP; "
           "`crowdsec-milter config [options]` prints the settings in force and where each "
           "comes from."),
    "check": ("Check that LAPI answers, that it accepts the key (or certificate), and count "
              "the active decisions the milter would hold. Exit status 0 when all is well, "
              "1 when not. Reads only GET /v1/decisions: a running milter's stream is not "
              "disturbed. Takes the milter's own options (or its -c config file).",
              None),
    "lookup": ("Show the decisions LAPI holds on IP and what the milter, with these options, "
               "would answer a client connecting from it. Exit status 0 let through, "
               "3 blocked, 1 LAPI could not answer, 2 bad input. Takes the milter's own "
               "options (or its -c config file).",
               None),
    "config": ("Print the settings these options, CROWDSEC_MILTER_* variables and config "
               "file add up to, one `key = value (source)` line each; the source is flag, "
               "env VARIABLE, file PATH or default. The API key is shown masked. Exit status "
               "0, or 2 with one line when the settings are bad. Asks LAPI nothing.",
               None),
}


class _Parser(configargparse.ArgParser):
    def error(self, message: str) -> NoReturn:
        # configargparse 1.5 (Debian 12) hands a bad config file's exception, not its text.
        raise ConfigError(scrub(str(message)))  # `api_key = KEY` comes back as --api_key=KEY


def fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {scrub(message)}", file=sys.stderr)
    sys.exit(2)


def open_config(path: str) -> io.StringIO:
    """A config file's text, read whole and decoded as UTF-8 whatever the locale. configargparse
    turns what this raises into an error naming the file, at start-up and on SIGHUP alike
    (reading while it parses let a UnicodeDecodeError escape)."""
    with open(path, "rb") as fh:
        data = fh.read(CONFIG_LIMIT + 1)
    if len(data) > CONFIG_LIMIT:
        raise ValueError(f"larger than {CONFIG_LIMIT} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start})") from None
    stream = io.StringIO(text)
    stream.name = path
    return stream


def build_parser(command: str | None = None) -> configargparse.ArgParser:
    """The parser of the milter's options; `command` (check, lookup) gives its own help."""
    d = Settings()
    description, epilog = _COMMANDS[command]
    p = _Parser(
        prog=PROG if command is None else f"{PROG} {command}",
        usage={None: None, "check": f"{PROG} check [options]",
               "lookup": f"{PROG} lookup IP [options]",
               "config": f"{PROG} config [options]"}[command],
        description=description,
        epilog=epilog,
        auto_env_var_prefix=ENV_PREFIX,
        formatter_class=configargparse.ArgumentDefaultsHelpFormatter,
        args_for_setting_config_path=["-c", "--config"],
        config_arg_help_message="config file of `key = value` lines (keys are the long flags)",
        config_file_open_func=open_config,
    )
    if command == "lookup":
        p.add_argument("ip", metavar="IP", help="the client address to look up, or "
                                                "user:LOGIN for the decisions on a login")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--socket", default=d.socket,
                   help="libmilter socket: inet:PORT@HOST, inet6:PORT@HOST or unix:/path")
    p.add_argument("--lapi-url", default=d.lapi_url, help="CrowdSec LAPI base URL")
    p.add_argument("--api-key", default=None,
                   help="bouncer API key (cscli bouncers add); prefer --api-key-file")
    p.add_argument("--api-key-file", default=None,
                   help="file holding the bouncer API key (keeps it out of ps)")
    p.add_argument("--mode", choices=("stream", "live"), default=d.mode,
                   help="stream: all decisions in memory; live: ask LAPI per IP and cache")
    p.add_argument("--update-frequency", type=float, default=d.update_frequency,
                   help="stream mode: seconds between pulls")
    p.add_argument("--resync-interval", type=float, default=d.resync_interval,
                   help="stream mode: seconds between full resyncs (startup=true) at the "
                        "latest; they come as often as every 60 s while cheap")
    p.add_argument("--state-file", default=d.state_file, metavar="PATH",
                   help="stream mode: file keeping the last good decisions, written after "
                        "pulls that changed something (at most every 30 s) and at stop, "
                        "enforced at start until the first good pull, even with LAPI down; "
                        "none turns it off")
    p.add_argument("--cache-ttl", type=float, default=d.cache_ttl,
                   help="live mode: seconds an answer is reused (never past a ban's expiry)")
    p.add_argument("--cache-size", type=int, default=d.cache_size,
                   help="live mode: addresses kept in the cache")
    p.add_argument("--lapi-timeout", type=float, default=d.lapi_timeout,
                   help="seconds one LAPI request may take in all (live lookup, check, "
                        "lookup); stream pulls wait this long for each read and take at most "
                        "60 s in all, 300 s for a startup pull")
    p.add_argument("--on-lapi-error", choices=("accept", "tempfail"), default=str(d.on_lapi_error),
                   help="what clients get while no decision can be had")
    p.add_argument("--action", action="append", default=None, metavar="KEY=ACTION",
                   help="action for decisions of a TYPE, an origin:NAME or a scenario:GLOB "
                        "(shell-style, case-insensitive): reject|tempfail|drop|tag|accept; "
                        "repeatable; per decision the most specific key wins (scenario, "
                        "origin, type), per client the most severe action "
                        "[default: ban=reject captcha=tempfail]")
    p.add_argument("--default-action", choices=[a.value for a in Action],
                   default=str(d.default_action),
                   help="action for decisions no --action key matches")
    p.add_argument("--origins", action="append", default=None, metavar="LIST",
                   help="enforce only decisions of these origins (comma-separated or "
                        "repeated: crowdsec, cscli, cscli-import, CAPI, lists, console...) "
                        "[default: all]")
    p.add_argument("--scenarios-containing", action="append", default=None, metavar="WORD",
                   help="enforce only decisions whose scenario contains one of these words "
                        "(case-insensitive; repeatable)")
    p.add_argument("--scenarios-not-containing", action="append", default=None,
                   metavar="WORD", help="never enforce decisions whose scenario contains one "
                                        "of these words (case-insensitive; repeatable)")
    p.add_argument("--tag-header", default=d.tag_header, metavar="NAME",
                   help="header added to each message of a client whose action is tag")
    p.add_argument("--geoip-country-db", default=None, metavar="PATH",
                   help="MaxMind DB file giving an address's country (GeoLite2-Country "
                        "layout): enforces Country decisions; off by default")
    p.add_argument("--geoip-asn-db", default=None, metavar="PATH",
                   help="MaxMind DB file giving an address's AS number (GeoLite2-ASN "
                        "layout): enforces AS decisions; off by default")
    p.add_argument("--widest-range", default=",".join(map(str, d.widest_range)),
                   metavar="V4,V6",
                   help="widest Range decisions enforced, as IPv4,IPv6 prefix lengths: "
                        "wider ones (0.0.0.0/0, ::/0: a typo would refuse every client) are "
                        "logged once and counted, never enforced; 0,0 enforces all")
    p.add_argument("--stage", choices=[s.value for s in Stage], default=str(d.stage),
                   help="where a banned client is answered (helo: at MAIL for a client "
                        "that skips HELO)")
    for name, reply in (("reject", d.reject_reply), ("tempfail", d.tempfail_reply),
                        ("drop", d.drop_reply), ("unavailable", d.unavailable_reply)):
        p.add_argument(f"--{name}-reply", default=f"{reply.code} {reply.xcode} {reply.text}",
                       help=f"SMTP reply for {name}; may use %%(ip)s %%(type)s %%(scenario)s "
                            "%%(origin)s" if name != "unavailable"
                       else "SMTP reply while LAPI is unavailable and --on-lapi-error=tempfail")
    p.add_argument("--trusted-network", action="append", default=None, metavar="CIDR",
                   help="never blocked (repeatable) [default: 127.0.0.0/8 ::1/128]")
    p.add_argument("--dry-run", action="store_true", help="decide and log, but block nobody")
    p.add_argument("--always-allow-rcpt", action="append", default=None, metavar="PATTERN",
                   help="with --stage rcpt, recipients let through even for banned clients "
                        "(repeatable, shell-style; an unqualified Postmaster always is) "
                        "[default: postmaster@* abuse@*]")
    p.add_argument("--exempt-authenticated", action="store_true",
                   help="never block a session whose client authenticated (SMTP AUTH: the "
                        "{auth_authen} macro, sent at MAIL); needs --stage mail or rcpt")
    p.add_argument("--trap-rcpt", action="append", default=None, metavar="PATTERN",
                   help="spam-trap recipients (repeatable, shell-style; matched without "
                        "quotes, source route, trailing dot or case): a RCPT to one "
                        "writes a rcpt_trap event; the MTA's answer is not changed")
    p.add_argument("--local-domains", action="append", default=None, metavar="LIST",
                   help="this MTA's own mail domains (comma-separated, repeatable): an "
                        "outside client naming one in HELO or MAIL FROM writes a "
                        "helo_forged or sender_spoofed event")
    p.add_argument("--fanout-limit", type=int, default=d.fanout_limit, metavar="N",
                   help="an unauthenticated transaction with more recipients writes a "
                        "rcpt_fanout event; 0 turns it off")
    p.add_argument("--fanout-domains", type=int, default=d.fanout_domains, metavar="N",
                   help="... or with recipients in more distinct domains; 0 turns it off")
    p.add_argument("--account-decisions", action="store_true",
                   help="refuse a login (SMTP AUTH user, {auth_authen}) that has a decision "
                        "on the username scope, at MAIL; costs a MAIL callback per message")
    p.add_argument("--account-reply", default=d.account_reply, metavar="TEXT",
                   help="reply text for a refused login, with the code of its action's "
                        "reply; may use %%(user)s %%(ip)s %%(type)s %%(scenario)s %%(origin)s")
    p.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                   help="serve Prometheus /metrics and /health here, IPv4 or IPv6 "
                        "(127.0.0.1:9395, [::1]:9395, [::]:9395); off by default")
    p.add_argument("--usage-metrics-interval", type=float, default=d.usage_metrics_interval,
                   help="seconds between remediation usage pushes to LAPI (CrowdSec 1.6.3+); "
                        "0 turns them off")
    p.add_argument("--lapi-ca", default=None, help="CA bundle to verify an https LAPI")
    p.add_argument("--lapi-cert", default=None,
                   help="client certificate for LAPI (instead of an API key)")
    p.add_argument("--lapi-key", default=None, help="private key of --lapi-cert")
    p.add_argument("--event-log", default=d.event_log,
                   help="JSON event lines: a path, - for stdout, syslog (or syslog:/socket), "
                        "or none")
    p.add_argument("--log-level", choices=_LEVELS, default=d.log_level, help="operational log")
    p.add_argument("--log-format", choices=("text", "json"), default=d.log_format,
                   help="operational log format (stderr)")
    return p


def _positive(name: str, value: float) -> float:
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"--{name} must be a positive number, not {value!r}")
    return value


def _usable_key(key: str, source: str) -> str:
    """The key, or ConfigError naming where it came from (never showing the key): it travels
    as an HTTP header value, where a line break or other control character makes every
    request fail with an error text holding the key."""
    if not key:
        raise ConfigError(f"{source} is empty")
    if not header_safe(key):
        raise ConfigError(f"{source}: the key holds a line break, control or non-ASCII "
                          "character; it must be one line of printable ASCII")
    return key


def _readable_by_others(mode: int, gid: int) -> bool:
    """True when a user other than this one can read a key file of this mode and group.
    Group read is no leak when the group is this user's own private group (the Debian
    package's key is root:crowdsec-milter 0640, read by the milter running as that user)."""
    if mode & stat.S_IROTH:
        return True
    if not mode & stat.S_IRGRP:
        return False
    if gid != os.getegid():
        return True
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(gid)
    except KeyError:
        return True
    return group.gr_name != user or not set(group.gr_mem) <= {user}


def _hidden_path(path: str) -> str:
    """How an --api-key-file that cannot be read is named. A mistaken setup may give the
    key itself as the path, so the value is shown only when its folder exists (other than
    `/`, which a key may start with): then it was a path, and the folder is where to look."""
    folder = os.path.dirname(path)
    if folder and folder != "/" and os.path.isdir(folder):
        return path
    return "(value not shown: it names no folder that exists, it may be the key itself)"


def read_api_key(args: configargparse.Namespace) -> str:
    if args.api_key and args.api_key_file:
        raise ConfigError("--api-key and --api-key-file exclude each other: give one")
    if args.api_key_file:
        path = args.api_key_file
        try:
            with open(path, encoding="utf-8") as fh:
                key = fh.read().strip()
            st = os.stat(path)
            mode, gid = st.st_mode, st.st_gid
        except OSError as exc:
            raise ConfigError(f"--api-key-file {_hidden_path(path)}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--api-key-file {path}: not text") from exc
        key = _usable_key(key, f"--api-key-file {path}")
        remember(key)
        if _readable_by_others(mode, gid):
            print(f"{PROG}: warning: --api-key-file {path} is readable by other users "
                  "(chmod 600 it)", file=sys.stderr)
        return key
    if args.api_key:
        key = _usable_key(args.api_key.strip(), "--api-key")
        remember(key)
        return key
    if args.lapi_cert:
        return ""
    if args.api_key is not None:
        raise ConfigError("--api-key is empty")
    raise ConfigError("an API key is required: --api-key-file or --api-key "
                      f"(or {ENV_PREFIX}API_KEY_FILE), or a client certificate (--lapi-cert)")


def check_socket(spec: str) -> str:
    match = _SOCKET.match(spec)
    if not match:
        raise ConfigError(f"--socket {spec!r} is not inet:PORT@HOST, inet6:PORT@HOST or unix:/path")
    if match.group(2) is not None and not 0 < int(match.group(2)) < 65536:
        raise ConfigError(f"--socket {spec!r}: port out of range")
    return spec


def check_url(url: str) -> str:
    try:
        parsed = httpx.URL(url)
        # The port, by the standard library: httpx 0.23 reads a bad one as no host at all,
        # and no httpx minds one past 65535.
        urllib.parse.urlsplit(url).port  # noqa: B018
    except Exception as exc:
        raise ConfigError(f"--lapi-url {url!r} is not a URL") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"--lapi-url {url!r} must be http:// or https:// with a host")
    return url


_ACTION_KEY = re.compile(r"(?:origin:[^\s=:]+|scenario:[^\s=]+|[^\s=:]+)")
_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,64}")  # RFC 5322 field name, kept short


def parse_actions(specs: Sequence[str] | None) -> tuple[tuple[str, Action], ...]:
    """`--action` specs as (key, action), keys lower-cased; a key given twice keeps the
    last one. Keys: TYPE, origin:NAME, scenario:GLOB."""
    if specs is None:
        return Settings().actions
    result: dict[str, Action] = {}
    for spec in specs:
        key, sep, action = spec.rpartition("=")
        key = key.strip().lower()
        try:
            if not sep or not _ACTION_KEY.fullmatch(key):
                raise ValueError
            result[key] = Action(action.strip().lower())
        except ValueError:
            raise ConfigError(
                f"--action {spec!r} is not KEY=reject|tempfail|drop|tag|accept with KEY a "
                "decision type, origin:NAME or scenario:GLOB"
            ) from None
    return tuple(result.items())


def split_list(name: str, values: Sequence[str] | None) -> tuple[str, ...] | None:
    """Repeated and comma-separated values as one tuple (None when the option is absent);
    an empty item is an error, not a filter that matches nothing."""
    if values is None:
        return None
    items = tuple(v.strip() for value in values for v in value.split(","))
    if not items or not all(items):
        raise ConfigError(f"--{name}: empty name in {','.join(values)!r}")
    return items


_DOMAIN = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")


def parse_domains(values: Sequence[str] | None) -> frozenset[str]:
    """--local-domains as compared: lower case, no trailing dot; a name that is no domain
    (an address, a pattern, a space) is an error, not a rule that never matches."""
    names = split_list("local-domains", values) or ()
    found = set()
    for name in names:
        normal = name.rstrip(".").lower()
        if not _DOMAIN.match(normal):
            raise ConfigError(f"--local-domains: {name!r} is not a domain name")
        found.add(normal)
    return frozenset(found)


def check_account_reply(text: str) -> str:
    """--account-reply: one line of text whose fields are the ones a verdict fills."""
    if not text.strip() or re.search(r"[\x00-\x1f\x7f]", text):
        raise ConfigError("--account-reply must be one line of text")
    try:
        text % {"user": "alice", "ip": "192.0.2.1", "type": "ban", "scenario": "x",
                "origin": "x"}
    except (KeyError, ValueError, TypeError):
        raise ConfigError("--account-reply may use only %(user)s %(ip)s %(type)s "
                          f"%(scenario)s %(origin)s: {text!r}") from None
    fixed = wire_size(text.strip() % {"user": "", "ip": "", "type": "", "scenario": "",
                                      "origin": ""})
    if fixed > REPLY_LIMIT:  # never fits what libmilter takes, whatever is filled in
        raise ConfigError(f"--account-reply is {fixed} bytes as sent (UTF-8, '%' doubled) "
                          f"before any field is filled in; libmilter takes at most "
                          f"{REPLY_LIMIT}")
    return text.strip()


def _count(name: str, value: int) -> int:
    if value < 0:
        raise ConfigError(f"--{name} must be 0 (off) or more, not {value}")
    return value


def check_mmdb(kind: str, path: str | None) -> str | None:
    """A MaxMind DB file that opens and is of the kind its option needs (`kind`: country,
    as; an ASN database given as the country one would never match), or ConfigError
    naming the option: checked at start and on SIGHUP, not at the first client."""
    if not path:
        return None
    from .geo import GeoError, load  # maxminddb only when a database is given

    try:
        load(path, kind)[0].close()
    except GeoError as exc:
        raise ConfigError(str(exc)) from None
    return path


def check_state_file(path: str) -> str:
    """The state file's path, or "" for none (or an empty value): no state file."""
    path = path.strip()
    if path.lower() == "none":
        return ""
    if path.endswith("/") or (path and os.path.isdir(path)):
        raise ConfigError(f"--state-file {path}: is a folder; name a file in it")
    return path


def check_widest(spec: str) -> tuple[int, int]:
    """`--widest-range V4,V6`: two prefix lengths, or ConfigError naming the option."""
    v4, sep, v6 = spec.replace("/", "").partition(",")
    if (sep and v4.strip().isdigit() and v6.strip().isdigit()
            and int(v4) <= 32 and int(v6) <= 128):
        return int(v4), int(v6)
    raise ConfigError(f"--widest-range {spec!r} is not V4,V6: an IPv4 prefix length (0-32) "
                      "and an IPv6 one (0-128), such as 8,16")


def check_header_name(name: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise ConfigError(f"--tag-header {name!r} is not a header name (1-64 printable "
                          "ASCII characters, no colon or space)")
    return name


def check_listen(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics-listen {spec!r} is not HOST:PORT")
    return host, int(port)


def check_tls(args: configargparse.Namespace) -> None:
    for name in ("lapi_ca", "lapi_cert", "lapi_key"):
        path = getattr(args, name)
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"--{name.replace('_', '-')} {path}: not readable")
    if bool(args.lapi_cert) != bool(args.lapi_key):
        raise ConfigError("--lapi-cert and --lapi-key go together")
    if args.lapi_cert and (args.api_key or args.api_key_file):
        raise ConfigError("--lapi-cert replaces the API key: give one or the other")
    if (args.lapi_cert or args.lapi_ca) and not args.lapi_url.startswith("https://"):
        raise ConfigError("--lapi-ca and --lapi-cert need an https:// --lapi-url")


def settings_from_args(args: configargparse.Namespace) -> Settings:
    """Turn parsed arguments into Settings, or raise ConfigError naming the bad one."""
    replies = {}
    for name, digit in (("reject", "5"), ("tempfail", "4"), ("drop", "4"), ("unavailable", "4")):
        try:
            replies[name] = Reply.parse(getattr(args, f"{name}_reply"), digit)
        except ValueError as exc:
            raise ConfigError(f"--{name}-reply: {exc}") from None
    if replies["drop"].code != "421":
        raise ConfigError("--drop-reply must use code 421 (the code that closes the session)")
    try:
        trusted = parse_networks(args.trusted_network) if args.trusted_network is not None \
            else Settings().trusted_networks
    except ValueError as exc:
        raise ConfigError(f"--trusted-network: {exc}") from None
    check_tls(args)
    allow = tuple(p.strip().lower() for p in args.always_allow_rcpt) \
        if args.always_allow_rcpt is not None else Settings().always_allow_rcpt
    traps = tuple(p.strip().lower() for p in args.trap_rcpt or () if p.strip())
    if args.exempt_authenticated and args.stage in (Stage.CONNECT, Stage.HELO):
        raise ConfigError(f"--exempt-authenticated needs --stage mail or rcpt, not "
                          f"{args.stage}: whether a client authenticated is known only "
                          "from MAIL FROM on ({auth_authen})")
    return Settings(
        socket=check_socket(args.socket),
        lapi_url=check_url(args.lapi_url),
        api_key=read_api_key(args),
        mode=args.mode,
        update_frequency=_positive("update-frequency", args.update_frequency),
        resync_interval=_positive("resync-interval", args.resync_interval),
        state_file=check_state_file(args.state_file),
        cache_ttl=_positive("cache-ttl", args.cache_ttl),
        cache_size=int(_positive("cache-size", args.cache_size)),
        lapi_timeout=_positive("lapi-timeout", args.lapi_timeout),
        on_lapi_error=Action(args.on_lapi_error),
        actions=parse_actions(args.action),
        default_action=Action(args.default_action),
        origins=split_list("origins", args.origins),
        scenarios_containing=split_list("scenarios-containing",
                                        args.scenarios_containing) or (),
        scenarios_not_containing=split_list("scenarios-not-containing",
                                            args.scenarios_not_containing) or (),
        tag_header=check_header_name(args.tag_header),
        geoip_country_db=check_mmdb("country", args.geoip_country_db),
        geoip_asn_db=check_mmdb("as", args.geoip_asn_db),
        widest_range=check_widest(args.widest_range),
        stage=Stage(args.stage),
        reject_reply=replies["reject"],
        tempfail_reply=replies["tempfail"],
        drop_reply=replies["drop"],
        unavailable_reply=replies["unavailable"],
        trusted_networks=trusted,
        dry_run=args.dry_run,
        event_log=args.event_log,
        always_allow_rcpt=allow,
        exempt_authenticated=args.exempt_authenticated,
        trap_rcpt=traps,
        local_domains=parse_domains(args.local_domains),
        fanout_limit=_count("fanout-limit", args.fanout_limit),
        fanout_domains=_count("fanout-domains", args.fanout_domains),
        account_decisions=args.account_decisions,
        account_reply=check_account_reply(args.account_reply),
        metrics_listen=check_listen(args.metrics_listen),
        usage_metrics_interval=0.0 if args.usage_metrics_interval == 0 else
        _positive("usage-metrics-interval", args.usage_metrics_interval),
        lapi_ca=args.lapi_ca,
        lapi_cert=args.lapi_cert,
        lapi_key=args.lapi_key,
        log_level=args.log_level,
        log_format=args.log_format,
    )


def parse_args(argv: Sequence[str], command: str | None = None) -> configargparse.Namespace:
    """Flags, environment and config file, or ConfigError naming the problem."""
    try:
        return build_parser(command).parse_args(list(argv))
    except OSError as exc:  # read errors configargparse does not catch itself
        raise ConfigError(f"{getattr(exc, 'filename', '') or 'config file'}: "
                          f"{exc.strerror or exc}") from exc
    except (UnicodeError, configargparse.ConfigFileParserException) as exc:
        raise ConfigError(f"config file: {exc}") from exc


def load(argv: Sequence[str]) -> Settings:
    """Settings from argv, environment and config file, or ConfigError naming the problem.
    Also used by SIGHUP to re-read the config file."""
    return settings_from_args(parse_args(argv))


def parse(argv: Sequence[str] | None = None) -> Settings:
    """Settings for start-up; exits 2 with one line naming the problem."""
    try:
        return load(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        fail(str(exc))


_SECRET = ("api_key",)  # shown masked, whatever its source
# Options whose default lives in Settings (their argparse default is None).
_LIST_DEFAULTS = {"action": [f"{t}={a}" for t, a in Settings().actions],
                  "trusted_network": [str(n) for n in Settings().trusted_networks],
                  "always_allow_rcpt": list(Settings().always_allow_rcpt)}


def _show(value: object) -> str:
    """A value as a config-file line would hold it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if value is None:
        return "(not set)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def config_lines(parser: configargparse.ArgParser, args: configargparse.Namespace) -> list[str]:
    """`key = value (source)` for every option, in --help order: what flags, variables,
    config file and defaults add up to. The key is masked, and so is the user:password
    part of a URL; the key's file is just a path."""
    sources = parser.get_source_to_settings_dict()
    where: dict[int, str] = {}
    for section, settings in sources.items():
        if section == "environment_variables":
            for name, (action, _value) in settings.items():
                where[id(action)] = f"env {name}"
        elif section.startswith("config_file"):
            path = section.partition("|")[2]
            for action, _value in settings.values():
                where[id(action)] = f"file {path}"
        elif section == "defaults":
            for action, _value in settings.values():
                where[id(action)] = "default"
    lines = []
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest in ("help", "version"):
            continue
        value = getattr(args, action.dest, None)
        source = where.get(id(action))
        if source is None:  # configargparse leaves out None defaults and bare switches
            source = "default" if value == action.default else "flag"
        if value is None and action.dest in _LIST_DEFAULTS:
            value = _LIST_DEFAULTS[action.dest]
        shown = MASK if action.dest in _SECRET and value else mask_url(_show(value))
        lines.append(f"{longs[-1][2:]} = {shown} ({source})")
    return lines


def show_config(argv: Sequence[str]) -> int:
    """`crowdsec-milter config`: print the settings in force; 2 with one line if bad."""
    parser = build_parser("config")
    try:
        try:
            args = parser.parse_args(list(argv))
        except OSError as exc:
            raise ConfigError(f"{getattr(exc, 'filename', '') or 'config file'}: "
                              f"{exc.strerror or exc}") from exc
        except (UnicodeError, configargparse.ConfigFileParserException) as exc:
            raise ConfigError(f"config file: {exc}") from exc
        settings_from_args(args)  # the same checks as at start-up
    except ConfigError as exc:
        fail(str(exc))
    print("\n".join(config_lines(parser, args)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "config":
        return show_config(argv[1:])
    if argv and argv[0] in ("check", "lookup"):
        from .tools import check, lookup

        command, rest = argv[0], argv[1:]
        try:
            args = parse_args(rest, command)
            settings = settings_from_args(args)
        except ConfigError as exc:
            fail(str(exc))
        return lookup(args.ip, settings) if command == "lookup" else check(settings)
    settings = parse(argv)
    from .app import run  # imported late: --help and bad flags need no pymilter

    return run(settings, lambda: load(argv))


if __name__ == "__main__":
    sys.exit(main())
