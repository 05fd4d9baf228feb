"""Helpers the unit tests share: a decision source over a plain index, a policy built
from settings as the milter builds it, and pymilter's test context driven as an MTA does."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import Milter
from crowdsec_milter.decisions import Decision, parse_decision, parse_scoped_decision
from crowdsec_milter.events import EventWriter
from crowdsec_milter.index import DecisionIndex
from crowdsec_milter.policy import DecisionSource, Policy, Stage
from crowdsec_milter.session import SessionContext, session_class
from crowdsec_milter.settings import Settings
from crowdsec_milter.wiring import make_policy
from Milter.testctx import TestCtx as MilterTestCtx


class IndexSource:
    """A decision source over a plain index (no I/O), or an unusable one."""

    def __init__(self, usable: bool = True) -> None:
        self.index = DecisionIndex()
        self.accounts: dict[str, list[Decision]] = {}
        self.usable = usable
        self.asked: list[str] = []

    def lookup(self, family: int, number: int, text: str,
               complete: bool = False) -> list[Decision] | None:
        """As StreamSource does: the index may stop at the first ban unless asked not to."""
        self.asked.append(text)
        return self.index.lookup(family, number, 0.0, complete) if self.usable else None

    def lookup_account(self, user: str) -> list[Decision] | None:
        return self.accounts.get(user, []) if self.usable else None

    def add(self, ident: int, value: str, type_: str = "ban", scope: str = "Ip",
            scenario: str = "crowdsecurity/postfix-spam", origin: str = "crowdsec",
            duration: str = "1h") -> None:
        parsed = parse_decision({"id": ident, "type": type_, "scope": scope, "value": value,
                                 "duration": duration, "origin": origin,
                                 "scenario": scenario}, 0.0)
        if parsed is None:  # a login's decision
            account = parse_scoped_decision({"id": ident, "type": type_, "scope": scope,
                                             "value": value, "duration": duration,
                                             "origin": origin, "scenario": scenario}, 0.0)
            assert account is not None
            self.accounts.setdefault(value, []).append(account)
            return
        self.index.add(*parsed)


def started_writer(path: Path) -> EventWriter:
    """An event writer to a file, its thread running: stop() it at the end."""
    writer = EventWriter(str(path))
    writer.start()
    return writer


def make(source: DecisionSource, **settings: Any) -> Policy:
    """The policy the milter would build from the default settings with these changed."""
    return make_policy(dataclasses.replace(Settings(), **settings), source)


class Ctx(MilterTestCtx):
    """pymilter's TestCtx, driven callback by callback as an MTA does; NOREPLY (a callback
    negotiated as no-reply) reads as CONTINUE, which is what the MTA assumes."""

    def setsymlist(self, stage: int, macros: str) -> None:
        """pymilter's TestCtx refuses more than 5 macros a stage; libmilter, Postfix and
        Sendmail (up to 50) take the list whole, as the real-Postfix tests show."""
        self._symlist[stage] = set(macros.encode().split(b" "))

    def _connect(self, host: str = "localhost", helo: str = "client.example",
                 ip: str = "192.0.2.1") -> int:
        self._negotiate()
        self._stage = Milter.M_CONNECT
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        rc = Milter.connect_callback(self, host, family, (ip, 25))
        self._stage = None
        rc = Milter.CONTINUE if rc == Milter.NOREPLY else rc
        if rc != Milter.CONTINUE:
            return rc
        return self._helo(helo)

    def getsymval(self, name: str) -> str | None:
        # libmilter keeps the macros of earlier stages (j from connect is there at RCPT,
        # seen with Postfix 3.7); pymilter's TestCtx hides all but the stage's symlist.
        return self._macros.get(name)

    def _call(self, stage: int, name: str, *args: str) -> int:
        self._stage = stage
        rc = getattr(self._priv, name)(*args)
        self._stage = None
        return Milter.CONTINUE if rc == Milter.NOREPLY else rc

    def _helo(self, helo: str) -> int:
        return self._call(Milter.M_HELO, "hello", helo)

    def _envfrom(self, *s: str) -> int:
        return self._call(Milter.M_ENVFROM, "envfrom", *s)

    def _envrcpt(self, s: str) -> int:
        return self._call(Milter.M_ENVRCPT, "envrcpt", s)

    def _data(self) -> int:
        return self._call(Milter.M_DATA, "data")


def ctx_for(stage: Stage, policy: Policy, events: EventWriter | None = None) -> Ctx:
    # TestCtx negotiates in place on a class-level list: give each test a fresh offer of
    # every protocol bit, as an MTA would make.
    MilterTestCtx.default_opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]
    ctx = Ctx()
    Milter.factory = session_class(SessionContext(policy=policy, stage=stage, events=events))
    return ctx
