"""CrowdSec decisions as the milter holds them, and how they are read from LAPI's JSON.

Pure: no I/O. LAPI is a remote peer whose answers are checked field by field, so one bad
decision is skipped (and counted) instead of spoiling the whole answer.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from typing import Any, NamedTuple

# Severity order: a ban outranks a captcha, which outranks every other type.
_SEVERITY = {"ban": 0, "captcha": 1}

# Go's time.Duration text: a sign, then number+unit pairs ("3h59m57s", "9m59.72s", "500ms").
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
# Anything longer than ten years is not a real expiry; it is a bug or an attack on our clock.
MAX_DURATION = 10 * 365 * 86400.0


class DecisionError(ValueError):
    """One decision from LAPI that cannot be used; the message says which field is wrong."""


# The shape LAPI writes nearly always: hours, minutes, seconds with a fraction.
_HMS = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string; negative for the already-expired ones in `deleted`."""
    if not isinstance(text, str) or not text:
        raise DecisionError(f"duration is not a Go duration: {text!r:.40}")
    fast = _HMS.fullmatch(text)
    if fast is not None and text != "":
        h, m, sec = fast.groups()
        if h or m or sec:
            # float, not int: hours of 5,000 digits make inf (then refused as absurd)
            # where int() raises ValueError past Python's 4,300-digit conversion limit
            return float(h or 0) * 3600.0 + float(m or 0) * 60.0 + float(sec or 0.0)
    sign = 1.0
    body = text
    if body[0] in "+-":
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(body) or pos == 0:
        raise DecisionError(f"duration is not a Go duration: {text!r:.40}")
    return sign * total


# A client address: family 4 or 6, the address as an integer, its canonical text. A plain
# tuple, not a NamedTuple: every SMTP connection parses one on the hot path.
Address = tuple[int, int, str]
_pton = socket.inet_pton
_AF_INET = socket.AF_INET


def parse_address(text: str) -> Address | None:
    """A client address string as (family, integer, canonical text), or None when it is
    no IP address.

    Accepts what MTAs hand over: `1.2.3.4`, `2001:db8::1`, `[::1]`, `IPv6:2001:db8::1`,
    `fe80::1%eth0` (scope dropped); IPv4-mapped IPv6 becomes IPv4. The canonical text is
    what logs, replies and LAPI queries show (inet_ntop's form).
    """
    if ":" not in text:  # plain dotted quad, nearly every client: one C call
        try:
            # inet_pton takes only canonical dotted quads (no leading zeros, four parts)
            return 4, int.from_bytes(_pton(_AF_INET, text), "big"), text
        except (OSError, ValueError):
            pass  # bracketed, empty or not an address: the careful path below
    if not text:
        return None
    if text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    if ":" not in text:
        try:
            return 4, int.from_bytes(_pton(_AF_INET, text), "big"), text
        except (OSError, ValueError):
            return None
    text = text.split("%", 1)[0]
    try:
        packed = _pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None
    number = int.from_bytes(packed, "big")
    if number >> 32 == 0xFFFF:
        return 4, number & 0xFFFFFFFF, socket.inet_ntoa(packed[12:])
    return 6, number, socket.inet_ntop(socket.AF_INET6, packed)


class Network(NamedTuple):
    """An address or prefix as integers: family 4 or 6, prefix length, network number."""

    family: int
    prefixlen: int
    number: int


def parse_network(scope: str, value: str) -> Network:
    """The network an Ip or Range decision covers; IPv4-mapped IPv6 becomes IPv4."""
    if not isinstance(value, str):
        raise DecisionError(f"value is not a string: {value!r:.60}")
    if "%" in value:
        raise DecisionError(f"value carries an interface scope: {value!r:.60}")
    if scope == "ip":
        # Fast path for the common case; inet_pton is strict (no scope, no prefix).
        try:
            packed = socket.inet_pton(socket.AF_INET6 if ":" in value else socket.AF_INET, value)
        except (OSError, ValueError):
            packed = b""
        if len(packed) == 4:
            return Network(4, 32, int.from_bytes(packed, "big"))
        if len(packed) == 16:
            number = int.from_bytes(packed, "big")
            if number >> 32 == 0xFFFF:
                return Network(4, 32, number & 0xFFFFFFFF)
            return Network(6, 128, number)
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise DecisionError(f"value is not an address or range: {value!r:.60}") from exc
    # Outside the try: DecisionError is a ValueError, and this message must not be replaced.
    if scope == "ip" and net.prefixlen != net.max_prefixlen:
        raise DecisionError(f"Ip decision with a prefix: {value!r:.60}")
    if net.version == 6:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None and net.prefixlen >= 96:
            net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}", strict=False)
    return Network(net.version, net.prefixlen, int(net.network_address))


# The widest Range decisions enforced, as prefix lengths (IPv4, IPv6); wider ones are set
# aside (--widest-range). /8 is the largest block ever held by one organisation in IPv4 (the
# legacy class A allocations); IANA hands the RIRs themselves /12s of IPv6 and the largest
# allocations to one holder are about /19, so a /16 already spans many unrelated
# networks. Anything wider (0.0.0.0/0, ::/0, 2000::/3) is a typo or a bug, and enforced it
# would refuse mail from most of the Internet.
WIDEST_RANGE = (8, 16)


def too_wide(net: Network, widest: tuple[int, int] = WIDEST_RANGE) -> bool:
    """Whether a decision's network is wider than `widest` (IPv4, IPv6 prefix lengths)."""
    return net.prefixlen < widest[0 if net.family == 4 else 1]


def network_text(family: int, prefixlen: int, number: int, scope: str) -> str:
    """A decision's value as the milter shows it (logs, events, replies): the canonical
    address, with its prefix length unless it is an Ip decision on a whole address."""
    if family == 4:
        address = socket.inet_ntop(socket.AF_INET, number.to_bytes(4, "big"))
        full = prefixlen == 32
    else:
        address = socket.inet_ntop(socket.AF_INET6, number.to_bytes(16, "big"))
        full = prefixlen == 128
    return address if full and scope == "Ip" else f"{address}/{prefixlen}"


class Decision(NamedTuple):
    """One CrowdSec decision with its own absolute expiry (on the monotonic clock).

    Identity is the LAPI id: two decisions with equal fields but different ids are both kept,
    so that deleting one leaves the other. A NamedTuple because lookups build one per hit
    and a frozen dataclass costs several times more to create.
    """

    id: int
    type: str
    scope: str
    value: str
    origin: str
    scenario: str
    expires: float

    @property
    def severity(self) -> int:
        """Lower is more severe: ban, then captcha, then any other type."""
        return _SEVERITY.get(self.type, 2)


class Partial(list):  # type: ignore[type-arg]
    """Decisions found on an address while part of what may cover it could not be had
    (its country's or AS's decisions: LAPI failed on that query, or the database could
    not be read). The policy takes them as they are and gives the unknown part the
    --on-lapi-error answer: the more severe of the two wins."""


def _text(item: dict, key: str, limit: int = 256) -> str:
    value = item.get(key)
    if value is None:
        return ""
    if value.__class__ is not str:
        raise DecisionError(f"{key} is not a string: {value!r:.40}")
    return value[:limit]


_SCOPES = {"ip": "Ip", "range": "Range", "Ip": "Ip", "Range": "Range"}


def parse_decision(item: object, now: float) -> tuple[Decision, Network] | None:
    """A decision and its network from one LAPI JSON object, or None for scopes we ignore.

    `now` is the monotonic time the answer arrived: LAPI gives durations, never absolute
    expiry times, so expiry is receipt time plus duration. This runs once per decision of a
    startup pull (a million at a time), hence the plain code.
    """
    if item.__class__ is not dict:
        raise DecisionError(f"decision is not an object: {item!r:.60}")
    get = item.get  # type: ignore[attr-defined]
    scope = get("scope")
    if scope.__class__ is not str:
        if scope is None:
            return None
        raise DecisionError(f"scope is not a string: {scope!r:.40}")
    scope = _SCOPES.get(scope) or _SCOPES.get(scope.lower())
    if scope is None:
        return None
    ident, dtype = _id_and_type(get)
    value = get("value")
    if value.__class__ is not str:
        raise DecisionError(f"value is not a string: {value!r:.60}")
    network = parse_network("ip" if scope == "Ip" else "range", value)
    return Decision(ident, dtype, scope, value, _text(item, "origin", 64),  # type: ignore[arg-type]
                    _text(item, "scenario"), _expiry(get, now)), network  # type: ignore[arg-type]


def _id_and_type(get: Any) -> tuple[int, str]:
    """A decision's id and its type (lower case, bounded), checked."""
    ident = get("id")
    if ident.__class__ is not int:
        raise DecisionError(f"id is not an integer: {ident!r:.40}")
    dtype = get("type")
    if dtype.__class__ is not str or not dtype:
        raise DecisionError(f"type is missing or not a string: {dtype!r:.40}")
    return ident, dtype.lower()[:64]


def _expiry(get: Any, now: float) -> float:
    """Monotonic expiry: receipt time plus the decision's duration, checked."""
    seconds = parse_duration(get("duration"))
    if seconds > MAX_DURATION:
        raise DecisionError(f"duration is absurd: {get('duration')!r:.40}")
    if seconds < 0:
        # already expired: nothing to enforce, so skipped and counted rather than stored to
        # be swept later (`deleted` entries are read through source._as_live, not this)
        raise DecisionError(f"duration is negative (already expired): {get('duration')!r:.40}")
    return now + seconds


# Decision scopes matched through a MaxMind database, as LAPI's `scopes=` names them.
GEO_SCOPES = {"country": "Country", "as": "AS"}
# Decisions on a login (SMTP AUTH user), matched against {auth_authen}. LAPI serves a scope
# by its exact spelling (`scopes=username`), so this is the one the shipped scenario uses.
ACCOUNT_SCOPE = "username"
_ACCOUNT_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def normalize_scoped(scope: str, value: str) -> str | None:
    """A Country, AS or account decision's value as compared (FR, 64500, alice); None when
    it is neither an ISO country code nor an AS number (with or without 'AS'), nor a login
    name (as the MTA spells it: compared exactly, at most 256 characters, no controls)."""
    if scope == ACCOUNT_SCOPE:
        return value if 0 < len(value) <= 256 and not _ACCOUNT_UNSAFE.search(value) else None
    value = value.strip()
    if scope == "Country":
        return value.upper() if len(value) == 2 and value.isascii() and value.isalpha() else None
    digits = value[2:] if value[:2].upper() == "AS" else value
    if digits.isascii() and digits.isdigit() and len(digits) <= 10:
        return str(int(digits))
    return None


def parse_scoped_decision(item: object, now: float) -> Decision | None:
    """A Country, AS or account decision from one LAPI JSON object (value normalized), or
    None for any other scope; DecisionError when it is one of those but unusable."""
    if item.__class__ is not dict:
        raise DecisionError(f"decision is not an object: {item!r:.60}")
    get = item.get  # type: ignore[attr-defined]
    scope = get("scope")
    if isinstance(scope, str):
        scope = ACCOUNT_SCOPE if scope.lower() == ACCOUNT_SCOPE else GEO_SCOPES.get(scope.lower())
    else:
        scope = None
    if scope is None:
        return None
    ident, dtype = _id_and_type(get)
    value = get("value")
    normal = normalize_scoped(scope, value) if isinstance(value, str) else None
    if normal is None:
        raise DecisionError(f"{scope} decision value is not usable: {value!r:.60}")
    return Decision(ident, dtype, scope, normal, _text(item, "origin", 64),  # type: ignore[arg-type]
                    _text(item, "scenario"), _expiry(get, now))  # type: ignore[arg-type]


def parse_ipv4_fast(item: dict[str, Any], now: float
                    ) -> tuple[int, int, tuple[str, str, str, str], float] | None:
    """The bulk of any startup answer, read with the least work: an Ip decision on an IPv4
    address whose fields are all plain. Gives (id, address, (type, scope, origin,
    scenario), expiry), or None to send the item down `parse_decision` (never an error).
    """
    get = item.get
    if get("scope") != "Ip":
        return None
    ident, value, dtype = get("id"), get("value"), get("type")
    duration, origin, scenario = get("duration"), get("origin"), get("scenario")
    if (ident.__class__ is not int or value.__class__ is not str or dtype.__class__ is not str
            or duration.__class__ is not str or origin.__class__ is not str
            or scenario.__class__ is not str or not dtype or len(dtype) > 64
            or len(origin) > 64 or len(scenario) > 256 or ":" in value):
        return None
    try:
        address = int.from_bytes(socket.inet_pton(socket.AF_INET, value), "big")
    except OSError:
        return None
    match = _HMS.fullmatch(duration)
    if match is None:
        return None
    h, m, sec = match.groups()
    if not (h or m or sec):
        return None
    seconds = float(h or 0) * 3600.0 + float(m or 0) * 60.0 + float(sec or 0.0)
    if seconds > MAX_DURATION:
        return None
    return ident, address, (dtype.lower(), "Ip", origin, scenario), now + seconds


def iso_expiry(expires: float, monotonic_now: float, wall_now: float) -> str:
    """A decision's expiry (on the monotonic clock) as ISO 8601 UTC wall time, to the
    second: what a log line or event says as `until`."""
    at = wall_now + (expires - monotonic_now)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(at, 0.0)))
