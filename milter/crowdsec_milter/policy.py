"""The policy: what a client gets, given the decisions that cover its address.

Pure apart from asking its decision source, which it names by the `DecisionSource`
protocol below and never imports: the policy depends on data (decisions.py) and counters
(tally.py) only. It knows nothing of libmilter: it returns a `Verdict` (an action and the
SMTP reply to give) that the milter session carries out.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from .decisions import Decision, Partial, parse_address
from .selection import RANK, ActionRules, Selection
from .tally import LOOKUP_CLEAN, LOOKUP_MATCH, LOOKUP_UNAVAILABLE, Tally


class DecisionSource(Protocol):
    """What the policy asks: the unexpired decisions covering an address, best first, or
    None while no decision can be had; a `Partial` list when some could not be had (the
    address's Country or AS decisions). `usable` is False until decisions can be had.
    complete=False lets a source stop at the first ban (the policy says when that is
    enough); Country and AS decisions on the address come with the rest."""

    def lookup(self, family: int, number: int, text: str,
               complete: bool = True) -> list[Decision] | None: ...

    def lookup_account(self, user: str) -> list[Decision] | None: ...

    @property
    def usable(self) -> bool: ...


class Action(enum.StrEnum):
    ACCEPT = "accept"  # log only
    REJECT = "reject"  # 5xx
    TEMPFAIL = "tempfail"  # 4xx
    DROP = "drop"  # 421 and disconnect
    TAG = "tag"  # let through, with a header on each message naming the decision


class Stage(enum.StrEnum):
    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"


_REPLY = re.compile(r"^([245]\d\d) (?:([245]\.\d{1,3}\.\d{1,3}) )?(\S.*)$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
# The longest reply text libmilter's smfi_setreply takes (MAXREPLYLEN in sendmail's
# libmilter/smfi.c), in bytes as pymilter sends it: UTF-8, with each '%' doubled.
REPLY_LIMIT = 980
FIELD_LIMIT = 100  # bytes of one filled-in field (a scenario may be anything LAPI was given)
_NO_FIELDS = {"ip": "", "type": "", "scenario": "", "origin": ""}


def wire_size(text: str) -> int:
    """The bytes `text` takes in a reply: UTF-8, '%' doubled (pymilter requires it)."""
    return len(text.encode("utf-8", "replace")) + text.count("%")


def fit(text: str, limit: int) -> str:
    """The longest head of `text` whose wire size is within `limit` bytes: never half a
    character, never half of a doubled '%'."""
    size = 0
    for i, ch in enumerate(text):
        size += wire_size(ch)
        if size > limit:
            return text[:i]
    return text


def _field(value: str) -> str:
    """A field as a reply may show it: one line, encodable, at most FIELD_LIMIT bytes."""
    value = value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become '?'
    return fit(_UNSAFE.sub("?", value), FIELD_LIMIT)


@dataclass(frozen=True)
class Reply:
    """An SMTP reply template: code, enhanced code and text with %(ip)s-style fields."""

    code: str
    xcode: str | None
    text: str

    @classmethod
    def parse(cls, spec: str, first_digit: str) -> Reply:
        """Read `550 5.7.1 text`; raise ValueError naming what is wrong."""
        match = _REPLY.match(spec.strip())
        if not match:
            raise ValueError(f"not an SMTP reply 'CODE [X.Y.Z] text': {spec!r}")
        code, xcode, text = match.groups()
        if code[0] != first_digit:
            raise ValueError(f"reply code must be {first_digit}xx: {spec!r}")
        if xcode and xcode[0] != first_digit:
            raise ValueError(f"enhanced code must start with {first_digit}: {spec!r}")
        try:
            fixed = text % _NO_FIELDS
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(
                f"reply text may use only %(ip)s %(type)s %(scenario)s %(origin)s: {spec!r}"
            ) from exc
        if _UNSAFE.search(text):
            raise ValueError(f"reply text has a control character: {spec!r}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"reply text is not valid UTF-8: {spec!r}") from None
        if wire_size(fixed) > REPLY_LIMIT:  # too long with every field empty: never fits
            raise ValueError(f"reply text is {wire_size(fixed)} bytes as sent (UTF-8, '%' "
                             f"doubled) before any field is filled in; libmilter takes at "
                             f"most {REPLY_LIMIT}")
        return cls(code, xcode, text)

    def render(self, fields: Mapping[str, str]) -> tuple[str, str | None, str]:
        """The reply to send: fields made single-line and cut to FIELD_LIMIT bytes, the
        text cut to what libmilter takes (REPLY_LIMIT bytes), '%' doubled for pymilter."""
        safe = {k: _field(v) for k, v in fields.items()}
        text = fit(self.text % {**_NO_FIELDS, **safe}, REPLY_LIMIT).replace("%", "%%")
        return self.code, self.xcode, text


TAG_LIMIT = 900  # bytes of a tag header's value: one header, well inside RFC 5322's 998
_NOT_HEADER_SAFE = re.compile(r"[^\x20-\x7e]")
_BARE = re.compile(r"[^\s;=\"\\]+")  # a value that needs no quotes


def _param(value: str) -> str:
    """A header parameter value: bare when it holds no separator, else a quoted-string
    (RFC 2045 style, `\\` and `\"` escaped), so no value can add or end a field."""
    if _BARE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tag_value(decision: Decision) -> str:
    """The tag header's value: `TYPE; origin=..; scenario=..; scope=..; value=..`, in
    printable ASCII only (a scenario may hold anything LAPI was given), a value quoted
    when it holds a separator, and at most TAG_LIMIT bytes (the longest field is cut,
    never the quoting; 899 when the last cut falls on an escaped character)."""
    fields = [_NOT_HEADER_SAFE.sub("?", x) for x in (
        decision.type, decision.origin, decision.scenario, decision.scope, decision.value)]
    names = ("origin", "scenario", "scope", "value")

    def render() -> str:
        params = "".join(f"; {k}={_param(v)}" for k, v in zip(names, fields[1:], strict=True))
        return _param(fields[0]) + params

    text = render()
    while len(text) > TAG_LIMIT:
        longest = max(range(len(fields)), key=lambda i: len(fields[i]))
        # half the excess at a time: an escaped character takes two bytes, so cutting the
        # whole excess at once could cut up to twice too much
        cut = len(fields[longest]) - (len(text) - TAG_LIMIT + 1) // 2
        fields[longest] = fields[longest][:max(0, cut)]
        text = render()
    return text


@dataclass(frozen=True)
class Verdict:
    """What to do with a client. `enforce` is False for accept-only and dry-run verdicts;
    `decision` is None when the verdict comes from a LAPI outage, not a decision; `key`
    is the --action key that gave the action."""

    action: Action
    reply: tuple[str, str | None, str] | None
    decision: Decision | None
    enforce: bool
    reason: str  # "decision", "lapi_unavailable"
    key: str = ""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(specs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs given on the command line; raise ValueError naming the bad one."""
    nets = []
    for spec in specs:
        try:
            nets.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"not a network: {spec!r}") from exc
    return tuple(nets)


class Policy:
    """Maps the decisions on a client to an action and a reply."""

    def __init__(
        self,
        source: DecisionSource,
        *,
        actions: Mapping[str, Action],
        default_action: Action,
        replies: Mapping[Action, Reply],
        unavailable_reply: Reply,
        on_lapi_error: Action,
        trusted: Iterable[IPNetwork] = (),
        dry_run: bool = False,
        tally: Tally | None = None,
        selection: Selection | None = None,
        account_text: str = "",
    ) -> None:
        self.source = source
        self._account_text = account_text
        self.tally = tally or Tally()
        self.rules = ActionRules.of(actions, default_action)
        self.selection = selection or Selection()
        # the index may stop at the first ban only when that settles the verdict
        self._complete = self.selection.active or not self.rules.first_ban_decides
        self._replies = dict(replies)
        self._unavailable = unavailable_reply
        self._on_error = on_lapi_error
        self._dry_run = dry_run
        self._trusted: list[tuple[int, int, int]] = []
        for net in trusted:
            family = net.version
            bits = 32 if family == 4 else 128
            shift = bits - net.prefixlen
            self._trusted.append((family, shift, int(net.network_address) >> shift))

    def action_for(self, decision: Decision) -> tuple[Action, str]:
        """The action one decision gets, and the --action key that gave it."""
        return self.rules.action_for(decision)

    def is_trusted(self, family: int, number: int) -> bool:
        return any(f == family and number >> s == n for f, s, n in self._trusted)

    def check(self, ip: str) -> Verdict | None:
        """The verdict on a client address, or None to let it through untouched."""
        key = parse_address(ip)
        if key is None:
            return None
        family, number, text = key
        if self.is_trusted(family, number):
            return None
        decisions = self.source.lookup(family, number, text, self._complete)
        if decisions is None:
            self.tally.inc(LOOKUP_UNAVAILABLE)
            return self.unavailable(text)
        partial = isinstance(decisions, Partial)
        if decisions and self.selection.active:
            decisions = [d for d in decisions if self.selection.selects(d)]
        if not decisions:
            self.tally.inc(LOOKUP_UNAVAILABLE if partial else LOOKUP_CLEAN)
            return self.unavailable(text) if partial else None
        verdict = self.verdict_for(decisions, text)
        if partial and RANK[self._on_error] > RANK[verdict.action]:
            # what is known is milder than what --on-lapi-error gives the unknown part
            self.tally.inc(LOOKUP_UNAVAILABLE)
            return self.unavailable(text)
        self.tally.inc(LOOKUP_MATCH)
        return verdict

    def check_account(self, user: str, ip: str) -> Verdict | None:
        """The verdict on a login (SMTP AUTH user) from the decisions on it, or None.
        A LAPI outage gives None here: the address check already answered for it."""
        decisions = self.source.lookup_account(user) if user else None
        if decisions and self.selection.active:
            decisions = [d for d in decisions if self.selection.selects(d)]
        if not decisions:
            return None
        return self.verdict_for(decisions, ip, user)

    def verdict_for(self, decisions: list[Decision], ip: str, user: str = "") -> Verdict:
        """Each decision gets the action of its most specific --action key; the most severe
        action wins (ties: the first decision, i.e. ban before captcha, longest-lived).
        With `user` (a decision on a login) the reply's text is --account-reply's."""
        decision = decisions[0]
        action, key = self.action_for(decision)
        for other in decisions[1:]:
            other_action, other_key = self.action_for(other)
            if RANK[other_action] > RANK[action]:
                decision, action, key = other, other_action, other_key
        reply = None
        if action in self._replies:
            fields = {"ip": ip, "type": decision.type, "scenario": decision.scenario,
                      "origin": decision.origin}
            template = self._replies[action]
            if user:
                fields["user"] = user
                template = Reply(template.code, template.xcode, self._account_text)
            reply = template.render(fields)
        return Verdict(action, reply, decision, action is not Action.ACCEPT and not self._dry_run,
                       "decision", key)

    def unavailable(self, ip: str) -> Verdict | None:
        """What a client gets while no decision can be had (also after an internal error)."""
        if self._on_error is Action.ACCEPT:
            return None
        return Verdict(self._on_error, self._unavailable.render({"ip": ip}), None,
                       not self._dry_run, "lapi_unavailable")
