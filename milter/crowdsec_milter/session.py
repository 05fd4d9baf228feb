"""The milter session: pymilter glue that asks the policy and carries out its verdict.

Thin on purpose. It asks the MTA only for the callbacks the enabled features need
(protocol.py), answers only at the configured stage (every other callback is `noreply`),
accepts at DATA so the MTA never sends headers or body, accepts at the deciding stage when
the event log is off and nothing later can change the answer, and never lets an exception
reach libmilter (pymilter would answer its own 451): an internal error gets what
`--on-lapi-error` says.

The one exception is a client whose action is `tag`: its session stays to the end of each
message to add one header naming the decision (headers and body are still never sent to
us), and the right to add headers is asked for only while some `--action` key can give
`tag`.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import Milter

from . import address
from .decisions import iso_expiry, parse_address
from .events import EventWriter, clean_text
from .policy import Action, Policy, Stage, Verdict, tag_value
from .protocol import Request, deciding, request
from .signals import Fanout, helo_forged, sender_spoofed
from .tally import ERRORS, SESSIONS, Tally, account_blocked, blocked, rcpt_rejected, rcpt_trap

log = logging.getLogger("crowdsec_milter.session")

_CLOSING = "Service not available, closing transmission channel"  # RFC 5321's 421 text
_RESULT = {Action.REJECT: Milter.REJECT, Action.TEMPFAIL: Milter.TEMPFAIL,
           Action.DROP: Milter.TEMPFAIL}


@dataclass
class SessionContext:
    """Everything a session needs, handed to the factory once: no globals."""

    policy: Policy
    stage: Stage
    events: EventWriter | None = None
    tally: Tally = field(default_factory=Tally)
    # with --stage rcpt: recipients let through even for a banned client (RFC 5321 4.5.1)
    always_allow_rcpt: tuple[str, ...] = ()
    # a client that authenticated (SMTP AUTH, known from MAIL on) is never blocked
    exempt_authenticated: bool = False
    # spam-trap recipients: a RCPT to one is reported as a rcpt_trap event
    trap_rcpt: tuple[str, ...] = ()
    tag_header: str = "X-CrowdSec-Decision"
    # the sensor's session signals: our own domains (HELO, MAIL FROM), fan-out limits
    local_domains: frozenset[str] = frozenset()
    fanout_limit: int = 0
    fanout_domains: int = 0
    # (country, AS) of an address, from the MaxMind databases given; None without any
    locate: Callable[[str], tuple[str, str]] | None = None
    # decisions on logins are checked at MAIL (--account-decisions)
    accounts: bool = False

    @property
    def tagging(self) -> bool:
        """Whether some --action key (or the default) can give tag."""
        return Action.TAG in self.policy.rules.actions

    @property
    def deciding(self) -> tuple[Stage, ...]:
        """The callbacks that may give the verdict: the stage's, and the next one when a
        client can skip it (protocol.deciding)."""
        return deciding(self.stage)

    def allowed_rcpt(self, rcpt: str, resolved: str = "") -> bool:
        """A recipient a banned client may still reach: unqualified Postmaster (RFC 5321
        4.5.1 MUST), and --always-allow-rcpt in any spelling (address.py)."""
        return address.is_postmaster(rcpt) or address.matches(
            address.spellings(rcpt, resolved), self.always_allow_rcpt)

    def trap(self, rcpt: str, resolved: str = "") -> bool:
        """A spam-trap recipient, however the client wrote it, or what the MTA resolved it
        to ({rcpt_addr})."""
        return bool(self.trap_rcpt) and address.matches(address.spellings(rcpt, resolved),
                                                        self.trap_rcpt)

    @property
    def final_at_verdict(self) -> bool:
        """Nothing after the verdict matters: no events to write, no trap to watch for, no
        login to check at MAIL."""
        return self.events is None and not self.trap_rcpt and not self.accounts

    def request(self, actions: int, offered: int) -> Request:
        """What to ask of an MTA offering `actions` and protocol bits `offered`."""
        return request(self.stage, sensor=self.events is not None,
                       mail=self.exempt_authenticated, rcpt=bool(self.trap_rcpt),
                       actions=actions, offered=offered, account=self.accounts)


# An enhanced status code (RFC 3463), and an SMTP reply that carries one.
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_REPLY_STATUS = re.compile(r"[245]\d\d[ -]([245]\.\d{1,3}\.\d{1,3})(?![\d.])")


def refusal(host: str, addr: str) -> tuple[str, str]:
    """(enhanced status, reason) of a recipient the MTA refused, from its {rcpt_host} and
    {rcpt_addr} macros. Postfix and Sendmail 8.17 put the status in {rcpt_host} and the
    reason in {rcpt_addr} (Sendmail as its reply, "550 5.1.1 User unknown"); a status found
    only in such a reply is taken from it. Sendmail 8.18 passes neither: the macros keep
    the address's own host and user ("" and the local part), which must not pass for a
    status or a reason, so both are empty then."""
    if _STATUS.fullmatch(host):
        return host, addr
    found = _REPLY_STATUS.match(addr)
    return (found.group(1), addr) if found else ("", "")


def _addr(family: int, hostaddr: Any) -> str:
    """The client IP from pymilter's connect arguments, '' for unix sockets and the like."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        return ""
    if isinstance(hostaddr, tuple):
        return str(hostaddr[0]) if hostaddr else ""
    return str(hostaddr or "")


class Session(Milter.Base):
    """One SMTP session's view of the client, and its verdict once asked."""

    context: SessionContext
    # the answer to each MTA offer, worked out once per class (one class per configuration)
    _requests: dict[tuple[int, int], Request]
    _said: set[str]

    def __init__(self) -> None:
        self.ip = ""
        self.client_name = ""
        self.helo = ""
        self.mail_from = ""
        self.auth_user = ""  # the SMTP AUTH login, from MAIL on
        self.verdict: Verdict | None = None
        self.asked = False
        self.reported = False
        self.tag = ""  # the header value each message gets, for a tagged client
        self.watched: bool | None = None  # an untrusted client's session signals are watched
        self.signalled = False  # the session's own signals (helo, auth) were looked at
        self.fanout: Fanout | None = None  # the open transaction's recipients, once watched

    # -- callbacks -------------------------------------------------------------------------

    def negotiate(self, opts: list[int]) -> int:
        """Ask for what `protocol.request` says, the answer cached per offer (pymilter's
        own negotiate walks every callback's attributes on each connection). Sets
        `_protocol`, which pymilter's no-reply wrappers read; on any error, pymilter's
        fallback: ask the MTA for everything."""
        try:
            actions, offered = opts[0], opts[1]
            req = self._requests.get((actions, offered))
            if req is None:
                req = self.context.request(actions, offered)
                self._requests[(actions, offered)] = req
                if (self.context.events is not None and req.wants_mail
                        and not self.context.exempt_authenticated
                        and "symlist" not in self._said):
                    self._said.add("symlist")
                    log.info("the MTA does not let the milter choose its macros: asking for "
                             "the MAIL callback too, for the sender of events")
            # of the rights to change messages, only adding headers, only while tag is
            # possible (headers and body are never asked for: protocol.NEVER)
            opts[0] = self._actions = actions & (Milter.ADDHDRS if self.context.tagging
                                                 else 0)
            self._protocol = opts[1] = req.steps
            opts[2] = opts[3] = 0
            if req.rcpt_macros:
                # through the context: pymilter 1.0.5's setsymlist passes bytes and fails
                self._ctx.setsymlist(Milter.M_ENVRCPT, req.rcpt_macros)
            return Milter.CONTINUE
        except Exception:
            log.exception("internal error negotiating with the MTA")
            return Milter.ALL_OPTS

    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        self.__init__()  # type: ignore[misc]  # a new connect (after XCLIENT) is a new client
        self.context.tally.inc(SESSIONS)
        self.ip = _addr(family, hostaddr)
        self.client_name = hostname or ""
        return self._at(Stage.CONNECT, rcpt="")

    def hello(self, hostname: str) -> int:
        self.helo = hostname or ""
        return self._at(Stage.HELO, rcpt="")

    def envfrom(self, mailfrom: str, *params: str) -> int:
        self.mail_from = mailfrom or ""
        # the MTA sends {auth_authen} at MAIL (Postfix's milter_mail_macros default)
        self.auth_user = self._macro("{auth_authen}")
        if self.auth_user and self.context.accounts:
            refused = self._account()
            if refused is not None:
                return refused
        return self._at(Stage.MAIL, rcpt="")

    def envrcpt(self, to: str, *params: str) -> int:
        try:
            sender = self.getsymval("{mail_addr}")  # asked for instead of the MAIL callback
            if sender is not None:
                self.mail_from = sender if sender[:1] == "<" else f"<{sender}>"
            if self.context.events is not None:
                self._signals(to)
            if self.getsymval("{rcpt_mailer}") == "error":
                self._rcpt_rejected(to)
                if self.context.trap(to):
                    self._rcpt_trap(to, accepted=False)
                return Milter.CONTINUE
        except Exception:
            log.exception("internal error recording a rejected recipient")
        resolved = self._macro("{rcpt_addr}")  # the address the MTA resolved `to` to
        result = self._at(Stage.RCPT, rcpt=to, resolved=resolved)
        try:
            if self.context.trap(to, resolved):  # seen, never answered differently
                self._rcpt_trap(to, accepted=result == Milter.CONTINUE)
        except Exception:
            log.exception("internal error recording a trap recipient")
        return result

    def data(self) -> int:
        # Nothing in headers or body matters to us: let the MTA skip the content phase,
        # unless the client is tagged (the header is added at end of message).
        self._end_transaction()
        return Milter.CONTINUE if self.tag else Milter.ACCEPT

    def abort(self) -> int:
        self._end_transaction()  # RSET, or the client gave up on the message
        return Milter.CONTINUE

    def close(self) -> int:
        self._end_transaction()
        return Milter.CONTINUE

    def eom(self) -> int:
        """Only tagged sessions get here: one header naming the decision per message."""
        if self.tag:
            try:
                self.addheader(self.context.tag_header, self.tag)
            except Exception:  # the message still goes through, untagged
                self.context.tally.inc(ERRORS)
                log.exception("internal error adding the %s header", self.context.tag_header)
        return Milter.ACCEPT

    # -- the sensor's session signals -------------------------------------------------------

    def _signals(self, to: str) -> None:
        """At each RCPT, with the event log on: the session's signals once (auth_session
        for a login, helo_forged otherwise), sender_spoofed once a transaction, and the
        transaction's recipients counted. Only here is it known whether the client logged
        in ({auth_authen} comes with the RCPT macros, or from MAIL)."""
        try:
            user = self.auth_user or self._macro("{auth_authen}")
            self.auth_user = user
            if user:
                if not self.signalled:
                    self.signalled = True
                    self._auth_session()
                return
            if not self._watched():
                return
            context = self.context
            if not self.signalled:
                self.signalled = True
                forged = helo_forged(self.helo, self.ip, self._macro("j"),
                                     context.local_domains,
                                     (self._macro("{daemon_addr}"), self._macro("{if_addr}")))
                if forged:
                    self._emit("helo_forged", forged=forged)
            if self.fanout is None:  # the transaction's first recipient
                self.fanout = Fanout()
                if context.local_domains and sender_spoofed(self.mail_from,
                                                            context.local_domains):
                    self._emit("sender_spoofed")
            self.fanout.add(to)
        except Exception:
            self.context.tally.inc(ERRORS)
            log.exception("internal error watching the session of client %s",
                          clean_text(self.ip, 64))

    def _watched(self) -> bool:
        """An unauthenticated client outside --trusted-network, whose address is known."""
        if self.watched is None:
            key = parse_address(self.ip) if self.ip else None
            self.watched = key is not None and \
                not self.context.policy.is_trusted(key[0], key[1])
        return self.watched

    def _end_transaction(self) -> None:
        """DATA, RSET or the end of the session: one rcpt_fanout event for a transaction
        past a fan-out limit."""
        fanout, self.fanout = self.fanout, None
        try:
            context = self.context
            if fanout is not None and context.events is not None and \
                    fanout.exceeds(context.fanout_limit, context.fanout_domains):
                self._emit("rcpt_fanout", recipients=fanout.recipients,
                           domains=len(fanout.domains),
                           recipient_limit=context.fanout_limit,
                           domain_limit=context.fanout_domains)
        except Exception:
            self.context.tally.inc(ERRORS)
            log.exception("internal error ending a transaction of client %s",
                          clean_text(self.ip, 64))

    def _auth_session(self) -> None:
        country = asn = ""
        if self.context.locate is not None and self.ip:
            country, asn = self.context.locate(self.ip)
        self._emit("auth_session", user=self.auth_user,
                   auth_type=self._macro("{auth_type}"), country=country, asn=asn)

    def _emit(self, event: str, **fields: Any) -> None:
        """One session event: who the client is, what it said, then the event's own fields."""
        assert self.context.events is not None
        self.context.events.emit(
            event, client_ip=self.ip, client_name=self.client_name, helo=self.helo,
            mail_from=self.mail_from, **fields, queue_id=self._macro("i"),
            mta=self._macro("j"))

    # -- internals -------------------------------------------------------------------------

    def _at(self, stage: Stage, rcpt: str, resolved: str = "") -> int:
        if stage not in self.context.deciding:
            return Milter.CONTINUE
        if rcpt and self.context.allowed_rcpt(rcpt, resolved):
            return Milter.CONTINUE
        try:
            if not self.asked:
                self.asked = True
                self.verdict = self.context.policy.check(self.ip) if self.ip else None
            verdict = self.verdict
            if verdict is None:
                return self._passed()
            exempt = self.context.exempt_authenticated and bool(self.auth_user)
            if not self.reported:
                self.reported = True
                self._report(verdict, stage, rcpt, exempt)
            if exempt or not verdict.enforce:
                return self._passed()
            if verdict.action is Action.TAG:  # let through; stays for the end of message
                assert verdict.decision is not None
                self.tag = tag_value(verdict.decision)
                return Milter.CONTINUE
            assert verdict.reply is not None
            code, xcode, text = verdict.reply
            if verdict.action is Action.DROP:
                code = "421"
            self._set_reply(code, xcode, text)
            return _RESULT[verdict.action]
        except Exception:
            self.context.tally.inc(ERRORS)
            log.exception("internal error deciding on client %s", clean_text(self.ip, 64))
            return self._fallback()

    def _account(self) -> int | None:
        """A login with a decision on it (--account-decisions): its answer, or None to go
        on with the address's. --exempt-authenticated never exempts such a login."""
        try:
            verdict = self.context.policy.check_account(self.auth_user, self.ip)
            if verdict is None:
                return None
            self._report(verdict, Stage.MAIL, "", account=True)
            if not verdict.enforce:
                return None
            if verdict.action is Action.TAG:
                assert verdict.decision is not None
                self.tag = tag_value(verdict.decision)
                return None
            assert verdict.reply is not None
            code, xcode, text = verdict.reply
            self._set_reply("421" if verdict.action is Action.DROP else code, xcode, text)
            return _RESULT[verdict.action]
        except Exception:
            self.context.tally.inc(ERRORS)
            log.exception("internal error deciding on login %s", clean_text(self.auth_user, 64))
            return None

    def _passed(self) -> int:
        """The answer for a client let through at the deciding stage: when nothing later
        can change it or needs to be seen (no event log, no trap recipients), ACCEPT, and
        the MTA stops calling us for this connection (from MAIL on: for this message)."""
        return Milter.ACCEPT if self.context.final_at_verdict else Milter.CONTINUE

    def _fallback(self) -> int:
        try:
            verdict = self.context.policy.unavailable(self.ip)
            if verdict is None or not verdict.enforce or verdict.reply is None:
                return Milter.CONTINUE
            self._set_reply(*verdict.reply)
            return Milter.TEMPFAIL
        except Exception:
            log.exception("internal error in the fallback answer")
            return Milter.CONTINUE

    def _set_reply(self, code: str, xcode: str | None, text: str) -> None:
        """Set the reply; when libmilter refuses it (`cannot set reply`), the verdict still
        holds with the bare code: the MTA's own text (for 421, a fixed one)."""
        try:
            self.setreply(code, xcode, text)
        except Exception:
            self.context.tally.inc(ERRORS)
            log.exception("cannot set the reply %s %s (%d bytes): answering with the bare "
                          "code", code, xcode or "", len(text.encode("utf-8", "replace")))
            if code == "421":  # the code that closes the session: worth one more try
                try:
                    self.setreply("421", None, _CLOSING)
                except Exception:
                    log.exception("cannot set the bare 421 reply either")

    def _report(self, verdict: Verdict, stage: Stage, rcpt: str, exempt: bool = False,
                account: bool = False) -> None:
        """One operational log line and one event per blocked session (or per session an
        authenticated client was let through in: action `exempt`, the decision named; or
        per message a login with a decision on it was answered in: `account`)."""
        decision = verdict.decision
        dtype = decision.type if decision else ""
        action = "exempt" if exempt else str(verdict.action)
        carried = "exempt" if exempt else str(verdict.action) if verdict.enforce else "none"
        origin = decision.origin if decision else ""
        self.context.tally.inc(account_blocked(dtype, origin, carried) if account else
                               blocked(dtype or verdict.reason, origin, str(stage), carried))
        if account:
            head = f"{verdict.action if verdict.enforce else 'would block'} login " \
                   f"{clean_text(self.auth_user, 64)}"
        elif exempt:
            head = f"exempt (authenticated as {clean_text(self.auth_user, 64)}, would " \
                   f"{verdict.action if verdict.enforce else 'not block'})"
        else:
            head = "would block" if not verdict.enforce else f"{verdict.action}"
        until = iso_expiry(decision.expires, time.monotonic(), time.time()) if decision else ""
        log.info(
            "%s client=%s type=%s scope=%s value=%s scenario=%s origin=%s id=%s until=%s "
            "key=%s stage=%s%s",
            head,
            clean_text(self.ip, 64), dtype or verdict.reason,
            decision.scope if decision else "", decision.value if decision else "",
            clean_text(decision.scenario if decision else "", 128).replace(" ", "_") or "-",
            decision.origin if decision else "", decision.id if decision else "-",
            until or "-", verdict.key or "-", stage,
            "" if verdict.enforce else " dry_run=1" if decision else "",
        )
        if self.context.events is not None:
            self.context.events.emit(
                "client_blocked",
                client_ip=self.ip, client_name=self.client_name, helo=self.helo,
                mail_from=self.mail_from, rcpt=rcpt, stage=str(stage),
                action=action, enforced=verdict.enforce and not exempt, reason=verdict.reason,
                decision_type=dtype,
                decision_scope=decision.scope if decision else "",
                decision_value=decision.value if decision else "",
                scenario=decision.scenario if decision else "",
                origin=decision.origin if decision else "",
                decision_id=decision.id if decision else 0,
                decision_until=until,
                mta=self._macro("j"),
            )

    def _rcpt_rejected(self, to: str) -> None:
        status, reason = refusal(self._macro("{rcpt_host}"), self._macro("{rcpt_addr}"))
        self.context.tally.inc(rcpt_rejected(status[:1] + "xx" if status else "unknown"))
        if self.context.events is None:
            return
        self.context.events.emit(
            "rcpt_rejected",
            client_ip=self.ip, client_name=self.client_name, helo=self.helo,
            mail_from=self.mail_from, rcpt=to, status=status,
            reason=reason, queue_id=self._macro("i"), mta=self._macro("j"),
        )

    def _rcpt_trap(self, to: str, accepted: bool) -> None:
        """A RCPT to a spam trap, whatever the MTA answered (`accepted`)."""
        self.context.tally.inc(rcpt_trap("accepted" if accepted else "rejected"))
        log.info("trap recipient client=%s rcpt=%s accepted=%s", clean_text(self.ip, 64),
                 clean_text(to, 256), "yes" if accepted else "no")
        if self.context.events is None:
            return
        rejected = not accepted and self._macro("{rcpt_mailer}") == "error"
        status, reason = refusal(self._macro("{rcpt_host}"), self._macro("{rcpt_addr}")) \
            if rejected else ("", "")
        self.context.events.emit(
            "rcpt_trap",
            client_ip=self.ip, client_name=self.client_name, helo=self.helo,
            mail_from=self.mail_from, rcpt=to, status=status, reason=reason,
            queue_id=self._macro("i"), mta=self._macro("j"), accepted=accepted,
        )

    def _macro(self, name: str) -> str:
        try:
            return self.getsymval(name) or ""
        except Exception:
            return ""


_NOREPLY_UNLESS = {"connect": Stage.CONNECT, "hello": Stage.HELO, "envfrom": Stage.MAIL,
                   "envrcpt": Stage.RCPT}


def session_class(context: SessionContext) -> type[Session]:
    """A Session subclass bound to `context`, whose callbacks other than the deciding ones
    are negotiated as no-reply, so the MTA does not wait for them."""
    attrs: dict[str, Any] = {"context": context, "_requests": {}, "_said": set()}
    for name, stage in _NOREPLY_UNLESS.items():
        if stage not in context.deciding and not (context.accounts and stage is Stage.MAIL):
            attrs[name] = Milter.noreply(getattr(Session, name))
    cls = type(f"Session_{context.stage}", (Session,), attrs)
    return Milter.rejected_recipients(cls)
