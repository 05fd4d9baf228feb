"""What an SMTP session says about its client beyond rejected recipients: pure logic.

A log parser sees Postfix's lines one by one; the milter sees the whole session with the
MTA's own macros, so it can tell a HELO that names this very MTA, a sender that claims one
of our domains from outside, and a transaction that fans out to many recipients or
domains. These functions only classify: the session decides when to ask (unauthenticated,
untrusted clients) and the event writer writes what they find.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

# How a HELO/EHLO name is forged, as the helo_forged event's `forged` field says it.
MTA_NAME = "mta_name"  # this MTA's own name ({j})
LOCAL_DOMAIN = "local_domain"  # one of --local-domains
MTA_ADDRESS = "mta_address"  # an address of this MTA ({daemon_addr}), literal or bare
FOREIGN_LITERAL = "foreign_literal"  # an address literal that is not the client's own

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def domain_name(text: str) -> str:
    """A domain as compared: lower case, without the root's trailing dot or spaces."""
    return text.strip().rstrip(".").lower()


def _address(text: str) -> IPAddress | None:
    """An IP address (IPv4-mapped IPv6 as IPv4), or None for anything else."""
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _helo_address(helo: str) -> IPAddress | None:
    """The address a HELO names: `[192.0.2.1]`, `[IPv6:2001:db8::1]`, or a bare address
    (which RFC 5321 does not allow, but clients send)."""
    text = helo.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if text[:5].lower() == "ipv6:":
            text = text[5:]
    return _address(text)


def helo_forged(helo: str, client_ip: str, mta_name: str, local_domains: Collection[str],
                mta_addresses: Iterable[str]) -> str:
    """How `helo` pretends to be this MTA or another host, or '' when it does not.

    `local_domains` are already in `domain_name` form. A literal of the client's own address
    is honest; an unparsable client address makes no literal foreign (nothing to compare)."""
    named = _helo_address(helo)
    if named is not None:
        if any(named == _address(own) for own in mta_addresses if own):
            return MTA_ADDRESS
        client = _address(client_ip)
        return FOREIGN_LITERAL if client is not None and named != client else ""
    name = domain_name(helo)
    if not name:
        return ""
    if mta_name and name == domain_name(mta_name):
        return MTA_NAME
    return LOCAL_DOMAIN if name in local_domains else ""


def address_domain(address: str) -> str:
    """The domain of an envelope address (`<user@Example.ORG.>` gives example.org), '' for
    the null sender or an address without one. A source route (`@relay:user@dom`) and
    quotes around the local part do not hide the domain."""
    text = address.strip().strip("<>").strip()
    if "@" not in text:
        return ""
    return domain_name(text.rpartition("@")[2])


def sender_spoofed(mail_from: str, local_domains: Collection[str]) -> bool:
    """Whether the envelope sender claims one of our own domains."""
    domain = address_domain(mail_from)
    return bool(domain) and domain in local_domains


@dataclass
class Fanout:
    """One transaction's recipients: how many, and to how many distinct domains."""

    recipients: int = 0
    domains: set[str] = field(default_factory=set)

    def add(self, rcpt: str) -> None:
        self.recipients += 1
        domain = address_domain(rcpt)
        if domain and len(self.domains) <= 4096:  # a count past any sane limit is enough
            self.domains.add(domain)

    def exceeds(self, recipient_limit: int, domain_limit: int) -> bool:
        """More recipients or distinct domains than allowed (a limit of 0 is off)."""
        return (0 < recipient_limit < self.recipients
                or 0 < domain_limit < len(self.domains))
