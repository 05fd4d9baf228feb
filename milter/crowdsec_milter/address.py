"""Recipient addresses in one spelling, so that a pattern (--trap-rcpt, --always-allow-rcpt)
matches every way of writing the mailbox it names.

An MTA delivers `"trap"@example.org`, `trap@example.org.`, `@relay.example.net:trap@example.org`
and `trap@EXAMPLE.ORG` to the same mailbox: the quotes, the trailing dot of the domain and the
source route (RFC 5321 4.1.2's A-d-l, which receivers ignore) change nothing, and domains are
case-insensitive. Pure: no I/O, no libmilter.
"""

from __future__ import annotations

import fnmatch
import re

# characters a local part can hold unquoted (RFC 5321 atext and dots)
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]*")


def _skip_route(text: str) -> str:
    """`text` without a leading source route (`@one,@two:`); a bracketed address literal
    in the route may hold colons."""
    if not text.startswith("@"):
        return text
    literal = False  # inside [...], which does not nest
    for i, ch in enumerate(text):
        if ch == "[":
            literal = True
        elif ch == "]":
            literal = False
        elif ch == ":" and not literal:
            return text[i + 1:]
    return text  # no colon: not a route, leave it to the pattern (it will not match)


def _split_quoted(text: str) -> tuple[str, str] | None:
    """A quoted local part unquoted, and what follows it; None when the quote is open."""
    out = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), text[i + 1:]
        out.append(ch)
        i += 1
    return None


def normalize(path: str) -> str:
    """The mailbox a RCPT path (or an MTA's resolved address) names, in one spelling: no
    angle brackets or source route, the local part unquoted (quoted again only where it
    needs quotes: `"a@b"@c` stays distinct from `a@b`), no trailing dot on the domain,
    lower case. A bare local part (`Postmaster`) stays bare."""
    text = path.strip()
    if text.startswith("<"):
        text = text[1:]
    if text.endswith(">"):
        text = text[:-1]
    text = _skip_route(text.strip())
    if text.startswith('"'):
        split = _split_quoted(text)
        if split is None:
            return text.lower()
        local, rest = split
        if rest and not rest.startswith("@"):
            return text.lower()  # not a quoted local part after all
        domain = rest[1:] if rest else None
    else:
        local, at, domain_text = text.partition("@")
        domain = domain_text if at else None
    if not _ATEXT.fullmatch(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if domain is None:
        return local.lower()
    return f"{local}@{domain.rstrip('.')}".lower()


def spellings(path: str, resolved: str = "") -> tuple[str, ...]:
    """What to match: the client's path and, where the MTA gave it ({rcpt_addr}), the
    address the MTA resolved it to, both normalized."""
    names = [normalize(path)]
    if resolved:
        other = normalize(resolved)
        if other != names[0]:
            names.append(other)
    return tuple(names)


def matches(names: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
    """Whether a spelling matches a (lower-case, shell-style) pattern."""
    return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns)


def is_postmaster(path: str) -> bool:
    """`<Postmaster>` without a domain, in any case: RFC 5321 4.5.1 says every SMTP server
    MUST accept it."""
    return normalize(path) == "postmaster"
