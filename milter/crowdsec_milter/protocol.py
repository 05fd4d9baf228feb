"""What the milter asks the MTA for: only the callbacks and macros the enabled features need.

Each callback the MTA makes costs it and us about 15 system calls and a context switch
(bench/README.md), so the answer to the MTA's offer is worked out once per offer and per
configuration, not per connection as pymilter's `Base.negotiate` does:

- the bouncer (the verdict) needs the callback of its stage (with --stage helo, MAIL too: a
  client may skip HELO, see `deciding`); with the event log off, that is all that is asked
  for, and a client that is let through gets ACCEPT there;
- the sensor (events) also needs HELO (the helo field), each RCPT (rejected recipients, with
  SMFIP_RCPT_REJ) and DATA (answered ACCEPT, so the content phase never reaches us); the
  sender comes with the RCPT macros ({mail_addr}, asked for with setsymlist) when the MTA
  lets us choose macros, so MAIL is not asked for; otherwise MAIL is asked for too.
"""

from __future__ import annotations

from dataclasses import dataclass

import Milter

from .policy import Stage

# Macros read at RCPT: ours replace the MTA's list for that stage (Postfix's default RCPT
# list is `i {rcpt_addr} {rcpt_host} {rcpt_mailer}`); {mail_addr} and the login
# ({auth_authen}, {auth_type}) spare the MAIL callback.
RCPT_MACROS = "i {rcpt_addr} {rcpt_host} {rcpt_mailer} {mail_addr} {auth_authen} {auth_type}"

# callback name: (its stage, no-reply bit, no-callback bit)
CALLBACKS = {
    "connect": (Stage.CONNECT, Milter.P_NR_CONN, Milter.P_NOCONNECT),
    "hello": (Stage.HELO, Milter.P_NR_HELO, Milter.P_NOHELO),
    "envfrom": (Stage.MAIL, Milter.P_NR_MAIL, Milter.P_NOMAIL),
    "envrcpt": (Stage.RCPT, Milter.P_NR_RCPT, Milter.P_NORCPT),
    "data": (None, Milter.P_NR_DATA, Milter.P_NODATA),
}
# never wanted: the content phase and unknown commands
NEVER = Milter.P_NOUNKNOWN | Milter.P_NOHDRS | Milter.P_NOEOH | Milter.P_NOBODY


def deciding(stage: Stage) -> tuple[Stage, ...]:
    """The callbacks that give the verdict for `--stage`: its own, and the first later one
    a client cannot skip when it can skip this one.

    A client may go straight to MAIL without HELO (Postfix's `smtpd_helo_required = no` is
    the default; Sendmail does not require it either), so --stage helo also decides at MAIL
    when no HELO came. The connect always comes; RCPT cannot come without MAIL, nor DATA
    without RCPT (503), so --stage connect, mail and rcpt need no second chance. Once given,
    the verdict is carried out again at each deciding callback that still comes (a client
    that sends HELO again)."""
    return (Stage.HELO, Stage.MAIL) if stage is Stage.HELO else (stage,)


@dataclass(frozen=True)
class Request:
    """The answer to one offer: protocol bits (SMFIP_*) and the RCPT macros to ask for."""

    steps: int
    rcpt_macros: str

    @property
    def wants_mail(self) -> bool:
        return not self.steps & Milter.P_NOMAIL


def request(stage: Stage, sensor: bool, mail: bool = False, rcpt: bool = False,
            actions: int = Milter.CURR_ACTS, offered: int = 0x1FFFFF,
            account: bool = False) -> Request:
    """What to ask of an MTA offering `actions` and protocol bits `offered`.

    `sensor`: the event log is on; `mail`: MAIL is needed whatever the stage (the SMTP AUTH
    login of --exempt-authenticated); `account`: MAIL answers (a login with a decision,
    --account-decisions); `rcpt`: every RCPT is (trap recipients). Bits the MTA
    does not offer are never asked for (an MTA that cannot skip a callback still makes it;
    the callbacks answer CONTINUE then)."""
    symlist = sensor and bool(actions & Milter.SETSYMLIST)
    needed = {"connect"}
    stages = deciding(stage)
    needed |= {name for name, (own, _, _) in CALLBACKS.items() if own in stages}
    if mail or account:
        needed.add("envfrom")
    if rcpt:
        needed |= {"envrcpt", "data"}
    if sensor:
        needed |= {"hello", "envrcpt", "data"}
        if not symlist:
            needed.add("envfrom")
    if stage is Stage.RCPT:
        # a banned client's always-allowed recipient goes on to DATA: answer ACCEPT there
        needed.add("data")
    steps = NEVER | Milter.P_SKIP
    if sensor or rcpt:  # rejected recipients are events; a rejected trap one is reported
        steps |= Milter.P_RCPT_REJ
    for name, (own, noreply, nocallback) in CALLBACKS.items():
        if name not in needed:
            steps |= nocallback
        elif own is not None and own not in stages and not (account and own is Stage.MAIL):
            steps |= noreply
    macros = RCPT_MACROS if symlist and "envfrom" not in needed else ""
    return Request(steps & offered, macros)
