"""Operator tools: `crowdsec-milter check` and `crowdsec-milter lookup IP`.

They run with the milter's own settings, so usually with its key, and must never make a
running milter miss a decision. LAPI keeps one stream cursor per bouncer (its LastPull):
a stream pull moves it, and so does `GET /v1/decisions` when the last pull is a minute old
or more (CrowdSec's GetDecision, 1.4.6 to today); the milter's next delta then starts at
the tool's request and the decisions added in between reach it only at the next resync.
`HEAD /v1/decisions` returns before that update (200, or 403 for a bad key).

So the key is checked with HEAD, and decisions are read with GET only where that cannot
move a stream cursor: in live mode (no stream consumer on the key), or in stream mode
with pulls at most SAFE_UPDATE_FREQUENCY apart (the cursor is then never a minute old; a
failed pull is followed by a full resync anyway). Otherwise the tools say what they did
not read and why.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable

from .decisions import (
    ACCOUNT_SCOPE,
    WIDEST_RANGE,
    Decision,
    DecisionError,
    Partial,
    iso_expiry,
    parse_address,
    parse_decision,
    parse_scoped_decision,
    too_wide,
)
from .lapi import LapiError
from .policy import Action, Policy, Stage, Verdict, tag_value
from .redact import scrub
from .selection import Selection
from .settings import Settings
from .source import LiveSource
from .wiring import make_client, make_geo, make_policy

PROBE_IP = "192.0.2.1"  # TEST-NET-1: never a real client
SAFE_UPDATE_FREQUENCY = 30.0  # seconds; LAPI moves the cursor on a GET at 60


def say(*parts: object, **kw: object) -> None:
    """print, with secrets masked (credentials in --lapi-url, the key in an error text)."""
    print(*(scrub(str(p)) for p in parts), **kw)  # type: ignore[call-overload]


def get_is_unsafe(settings: Settings) -> str | None:
    """Why a `GET /v1/decisions` with this key could make a running milter miss decisions,
    or None when it cannot."""
    if settings.mode == "live" or settings.update_frequency <= SAFE_UPDATE_FREQUENCY:
        return None
    return (f"with --update-frequency {settings.update_frequency:g} (over "
            f"{SAFE_UPDATE_FREQUENCY:g} s) a GET /v1/decisions with the milter's key can move "
            "its stream cursor and hide decisions from it; `cscli decisions list` shows them, "
            "or give the tools a key of their own (cscli bouncers add) with --mode live")


def check(settings: Settings) -> int:
    """Exit 0 when LAPI is up and accepts the key, 1 when not."""
    client = make_client(settings)
    try:
        try:
            say(f"LAPI {settings.lapi_url}: health {client.health()}")
        except LapiError as exc:
            say(f"LAPI {settings.lapi_url}: unreachable ({exc})")
            return 1
        try:
            client.check_key(PROBE_IP)
        except LapiError as exc:
            say(f"bouncer credentials: FAILED ({exc.kind}): {exc}")
            return 1
        say("bouncer credentials: accepted")
        unsafe = get_is_unsafe(settings)
        if unsafe:
            say(f"active decisions: not read: {unsafe}")
        else:
            try:
                say(f"active decisions: "
                      f"{count_decisions(client.active_decisions(), settings.selection, settings)}")
            except LapiError as exc:
                say(f"active decisions: could not be counted ({exc.kind}): {exc}")
                return 1
        say(f"mode {settings.mode}, stage {settings.stage}, "
              f"on LAPI error: {settings.on_lapi_error}")
        return 0
    finally:
        client.close()


def count_decisions(items: Iterable[object], selection: Selection | None = None,
                    settings: Settings | None = None) -> str:
    """'N (ban Ip: a, ban Range: b, ...)' for the decisions the milter would hold; those it
    would skip (other scopes, bad values) are counted apart; with a selection, how many of
    those held are enforced and how many each filter drops (the first that drops it)."""
    now = time.monotonic()
    counts: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    skipped: Counter[str] = Counter()  # Country/AS decisions without their database
    usable = {"Country": bool(settings and settings.geoip_country_db),
              "AS": bool(settings and settings.geoip_asn_db),
              ACCOUNT_SCOPE: bool(settings and settings.account_decisions)}
    widest = settings.widest_range if settings else WIDEST_RANGE
    other = bad = wide = 0
    for item in items:
        try:
            parsed = parse_decision(item, now)
            decision = parsed[0] if parsed else parse_scoped_decision(item, now)
        except DecisionError:
            bad += 1
            continue
        if decision is None:
            other += 1
        elif parsed is not None and too_wide(parsed[1], widest):
            wide += 1
        elif decision.scope in usable and not usable[decision.scope]:
            skipped[decision.scope] += 1
        else:
            counts[f"{decision.type} {decision.scope}"] += 1
            why = selection.why_not(decision.origin, decision.scenario) if selection else None
            if why:
                dropped[why] += 1
    detail = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
    held = sum(counts.values())
    text = f"{held}" + (f" ({detail})" if detail else "")
    if selection is not None and selection.active:
        text += f"; selected: {held - sum(dropped.values())}"
        for option in ("--origins", "--scenarios-containing", "--scenarios-not-containing"):
            text += f", dropped by {option}: {dropped[option]}"
    for scope, option in (("Country", "--geoip-country-db"), ("AS", "--geoip-asn-db"),
                          (ACCOUNT_SCOPE, "--account-decisions")):
        if skipped[scope]:
            text += f"; {skipped[scope]} {scope} (not used: no {option})"
    if wide:
        text += (f"; {wide} too wide (not enforced: wider than --widest-range "
                 f"{widest[0]},{widest[1]})")
    if other:
        text += f"; {other} of other scopes (not used)"
    if bad:
        text += f"; {bad} unusable (skipped)"
    return text


def geo_line(settings: Settings, located: tuple[str, str] | None) -> str:
    """What lookup says of Country and AS decisions: the address's country and AS, or why
    such decisions are not checked (None: a database could not be read)."""
    if located is None:
        return ("country and AS unknown: a --geoip-* database cannot be read (see the log); "
                "Ip and Range decisions still apply")
    country, asn = located
    parts = []
    if settings.geoip_country_db:
        parts.append(f"country {country or 'unknown'} (--geoip-country-db)")
    else:
        parts.append("Country decisions not checked: no --geoip-country-db")
    if settings.geoip_asn_db:
        parts.append(f"AS {asn or 'unknown'} (--geoip-asn-db)")
    else:
        parts.append("AS decisions not checked: no --geoip-asn-db")
    return "; ".join(parts)


def _show_decisions(decisions: list[Decision], policy: Policy) -> None:
    now = time.monotonic()
    wall = time.time()
    for d in decisions:
        say(f"decision id={d.id} type={d.type} scope={d.scope} value={d.value} "
              f"origin={d.origin} scenario={d.scenario} expires_in={d.expires - now:.0f}s "
              f"until={iso_expiry(d.expires, now, wall)}")
        why = policy.selection.why_not(d.origin, d.scenario)
        action, key = policy.action_for(d)
        say(f"  not selected (dropped by {why})" if why else
              f"  selected; --action key {key}: {action}")


def _answer(verdict: Verdict | None, settings: Settings, where: str) -> int:
    """Print what the milter would answer; 0 to let through, 3 to block."""
    if verdict is not None and verdict.enforce and verdict.action is Action.TAG:
        assert verdict.decision is not None
        say(f"milter answer: tag: let through, each message gets the header "
              f"{settings.tag_header}: {tag_value(verdict.decision)}")
        return 0
    if verdict is None or not verdict.enforce:
        say("milter answer: let through" + (" (dry run)" if verdict else ""))
        return 0
    code, xcode, text = verdict.reply  # type: ignore[misc]
    if verdict.action is Action.DROP:
        code = "421"
    say(f"milter answer: {verdict.action} at {where}: {code} {xcode or ''} "
          f"{text.replace('%%', '%')}")
    return 3


def lookup_login(user: str, settings: Settings) -> int:
    """`lookup user:LOGIN`: the decisions on a login (scope username) and what the milter
    would answer it at MAIL; exit codes as for an address."""
    unsafe = get_is_unsafe(settings)
    if unsafe:
        say(f"decisions on login {user}: not read: {unsafe}")
        return 1
    client = make_client(settings)
    try:
        source = LiveSource(client, 1.0, timeout=settings.lapi_timeout, accounts=True)
        policy = make_policy(settings, source)
        decisions = source.lookup_account(user)
        if decisions is None:
            say("LAPI could not answer; logins are then checked by address only")
            return 1
        _show_decisions(decisions, policy)
        if not decisions:
            say(f"no decision on login {user}")
        if not settings.account_decisions:
            say("milter answer: let through (logins are not checked: no "
                  "--account-decisions)")
            return 0
        return _answer(policy.check_account(user, ""), settings, "mail")
    finally:
        client.close()


def lookup(ip: str, settings: Settings) -> int:
    """Print the decisions on IP (or on a login, `user:LOGIN`) and what the milter would
    answer; exit 0 if it would let the client through, 3 if it would block it, 1 if LAPI
    could not say (or could not be asked without disturbing a running milter)."""
    if ip.startswith("user:") and len(ip) > 5:
        return lookup_login(ip[5:], settings)
    address = parse_address(ip)
    if address is None:
        say(f"crowdsec-milter: error: not an IP address: {ip!r}", file=sys.stderr)
        return 2
    unsafe = get_is_unsafe(settings)
    if unsafe:
        say(f"decisions on {ip}: not read: {unsafe}")
        return 1
    client = make_client(settings)
    geo = make_geo(settings)
    try:
        source = LiveSource(client, 1.0, timeout=settings.lapi_timeout, geo=geo,
                            widest=settings.widest_range)
        policy = make_policy(settings, source)
        family, number, text = address
        located = geo.locate(text) if geo else ("", "")
        say(geo_line(settings, located))
        decisions = source.lookup(family, number, text)
        if decisions is None:
            say(f"LAPI could not answer; clients get: {settings.on_lapi_error}")
            return 1
        if isinstance(decisions, Partial):
            say(f"the Country/AS decisions on this address could not be had; for them "
                  f"clients get: {settings.on_lapi_error} (the more severe answer wins)")
        _show_decisions(decisions, policy)
        for d in source.too_wide():
            say(f"decision id={d.id} type={d.type} scope={d.scope} value={d.value} "
                  f"origin={d.origin} scenario={d.scenario}")
            say(f"  not enforced: wider than --widest-range "
                  f"{settings.widest_range[0]},{settings.widest_range[1]}")
        if not decisions:
            say("no decision covers this address")
        verdict = policy.check(ip)
        if policy.is_trusted(family, number):
            say("trusted network: never blocked")
        stages = ", ".join(s.value for s in Stage)
        return _answer(verdict, settings, f"{settings.stage} (stages: {stages})")
    finally:
        client.close()

