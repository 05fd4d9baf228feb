"""Operator tools: `crowdsec-milter check` and `crowdsec-milter lookup IP`.

Both ask LAPI with `GET /v1/decisions` only (`?ip=`, and unfiltered for the count). They
never pull the decision stream: LAPI keeps one stream cursor per bouncer key, and a pull from
here would steal the running milter's delta. (LAPI moves that cursor on `/v1/decisions` only
when the key's last pull is a minute old or more, which a stream-mode milter never lets
happen.)
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable

from .app import make_client
from .decisions import DecisionError, parse_decision
from .index import address_key
from .lapi import LapiError
from .policy import Policy, Stage
from .settings import Settings
from .source import LiveSource

PROBE_IP = "192.0.2.1"  # TEST-NET-1: never a real client


def check(settings: Settings) -> int:
    """Exit 0 when LAPI is up and accepts the key, 1 when not."""
    client = make_client(settings)
    try:
        try:
            print(f"LAPI {settings.lapi_url}: health {client.health()}")
        except LapiError as exc:
            print(f"LAPI {settings.lapi_url}: unreachable ({exc})")
            return 1
        try:
            found = client.query(PROBE_IP)
        except LapiError as exc:
            print(f"bouncer credentials: FAILED ({exc.kind}): {exc}")
            return 1
        print(f"bouncer credentials: accepted ({len(found)} decision(s) on {PROBE_IP})")
        try:
            print(f"active decisions: {count_decisions(client.active_decisions())}")
        except LapiError as exc:
            print(f"active decisions: could not be counted ({exc.kind}): {exc}")
            return 1
        print(f"mode {settings.mode}, stage {settings.stage}, "
              f"on LAPI error: {settings.on_lapi_error}")
        return 0
    finally:
        client.close()


def count_decisions(items: Iterable[object]) -> str:
    """'N (ban Ip: a, ban Range: b, ...)' for the decisions the milter would hold; those it
    would skip (other scopes, bad values) are counted apart."""
    now = time.monotonic()
    counts: Counter[str] = Counter()
    other = bad = 0
    for item in items:
        try:
            parsed = parse_decision(item, now)
        except DecisionError:
            bad += 1
            continue
        if parsed is None:
            other += 1
        else:
            counts[f"{parsed[0].type} {parsed[0].scope}"] += 1
    detail = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
    text = f"{sum(counts.values())}" + (f" ({detail})" if detail else "")
    if other:
        text += f"; {other} of other scopes (not used)"
    if bad:
        text += f"; {bad} unusable (skipped)"
    return text


def lookup(ip: str, settings: Settings) -> int:
    """Print the decisions on IP and what the milter would answer; exit 0 if it would
    let the client through, 3 if it would block it, 1 if LAPI could not say."""
    if address_key(ip) is None:
        print(f"crowdsec-milter: error: not an IP address: {ip!r}", file=sys.stderr)
        return 2
    client = make_client(settings)
    try:
        source = LiveSource(client, 1.0, timeout=settings.lapi_timeout)
        policy = Policy(source, actions=settings.action_map,
                        default_action=settings.default_action, replies=settings.replies,
                        unavailable_reply=settings.unavailable_reply,
                        on_lapi_error=settings.on_lapi_error,
                        trusted=settings.trusted_networks, dry_run=settings.dry_run)
        family, number, text = address_key(ip)  # type: ignore[misc]
        decisions = source.lookup(family, number, text)
        if decisions is None:
            print(f"LAPI could not answer; clients get: {settings.on_lapi_error}")
            return 1
        now = time.monotonic()
        for d in decisions:
            print(f"decision id={d.id} type={d.type} scope={d.scope} value={d.value} "
                  f"origin={d.origin} scenario={d.scenario} expires_in={d.expires - now:.0f}s")
        if not decisions:
            print("no decision covers this address")
        verdict = policy.check(ip)
        if policy.is_trusted(family, number):
            print("trusted network: never blocked")
        if verdict is None or not verdict.enforce:
            print("milter answer: let through" + (" (dry run)" if verdict else ""))
            return 0
        code, xcode, text = verdict.reply  # type: ignore[misc]
        stages = [s.value for s in Stage]
        print(f"milter answer: {verdict.action} at {settings.stage} "
              f"(stages: {', '.join(stages)}): {code} {xcode or ''} {text.replace('%%', '%')}")
        return 3
    finally:
        client.close()

