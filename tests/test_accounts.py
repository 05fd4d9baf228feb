"""Decisions on logins (--account-decisions): the policy and the session, without sockets."""

from __future__ import annotations

import Milter
import pytest
from crowdsec_milter.policy import Action, Stage
from crowdsec_milter.tally import account_blocked
from helpers import IndexSource, ctx_for, make


def source() -> IndexSource:
    src = IndexSource()
    src.add(1, "alice", scope="username", scenario="crowdsec-milter/account-roaming")
    src.add(2, "carol", scope="username", type_="captcha")
    src.add(3, "203.0.113.66")
    return src


def login(stage: Stage, user: str, ip: str = "192.0.2.10", **settings: object):
    policy = make(source(), **settings)
    ctx = ctx_for(stage, policy)
    Milter.factory.context.accounts = True  # type: ignore[attr-defined]
    assert ctx._connect(ip=ip) == Milter.CONTINUE
    if user:
        ctx._setsymval("{auth_authen}", user)
    return ctx, ctx._envfrom("<x@example.org>")


@pytest.mark.parametrize("stage", [Stage.CONNECT, Stage.MAIL, Stage.RCPT])
def test_a_locked_login_is_refused_at_mail_from_a_clean_address(stage: Stage) -> None:
    ctx, rc = login(stage, "alice")
    assert rc == Milter.REJECT
    assert ctx._reply == ("550", "5.7.1", "account alice is locked by CrowdSec: if it is "
                          "yours, contact the postmaster")


def test_the_action_comes_from_the_decision_type_and_the_text_from_account_reply() -> None:
    ctx, rc = login(Stage.CONNECT, "carol",
                    account_reply="login %(user)s (%(type)s from %(ip)s): call us")
    assert rc == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.7.1", "login carol (captcha from 192.0.2.10): call us")
    ctx, rc = login(Stage.CONNECT, "alice", actions=(("ban", Action.DROP),))
    assert rc == Milter.TEMPFAIL and ctx._reply[0] == "421"


def test_other_logins_and_sessions_without_one_go_on() -> None:
    for user in ("bob", "Alice", ""):
        ctx, rc = login(Stage.MAIL, user)
        assert rc == Milter.CONTINUE and ctx._reply is None, user


def test_exempt_authenticated_never_exempts_a_locked_login() -> None:
    policy = make(source())
    ctx = ctx_for(Stage.MAIL, policy)
    context = Milter.factory.context  # type: ignore[attr-defined]
    context.accounts = context.exempt_authenticated = True
    ctx._connect(ip="203.0.113.66")  # a banned address, exempt once logged in
    ctx._setsymval("{auth_authen}", "bob")
    assert ctx._envfrom("<bob@example.org>") == Milter.CONTINUE
    ctx._connect(ip="192.0.2.10")
    ctx._setsymval("{auth_authen}", "alice")
    assert ctx._envfrom("<alice@example.org>") == Milter.REJECT


def test_dry_run_logs_and_counts_a_locked_login_but_lets_it_through() -> None:
    ctx, rc = login(Stage.MAIL, "alice", dry_run=True)
    assert rc == Milter.CONTINUE and ctx._reply is None
    tally = Milter.factory.context.tally  # type: ignore[attr-defined]
    assert tally.snapshot().get(account_blocked("ban", "crowdsec", "none")) == 1


def test_a_refused_login_is_counted_apart_from_addresses() -> None:
    _ctx, rc = login(Stage.CONNECT, "alice")
    assert rc == Milter.REJECT
    snap = Milter.factory.context.tally.snapshot()  # type: ignore[attr-defined]
    assert snap.get(account_blocked("ban", "crowdsec", "reject")) == 1
    assert not [k for k in snap if k.kind == "blocked"]


def test_without_account_decisions_mail_is_not_asked_to_answer() -> None:
    ctx = ctx_for(Stage.CONNECT, make(source()))
    ctx._negotiate()
    assert ctx._protocol & Milter.P_NOMAIL
    ctx = ctx_for(Stage.CONNECT, make(source()))
    Milter.factory.context.accounts = True  # type: ignore[attr-defined]
    # the class is made per context: a new one, as the milter makes at start
    from crowdsec_milter.session import session_class
    Milter.factory = session_class(Milter.factory.context)  # type: ignore[attr-defined]
    ctx._negotiate()
    assert not ctx._protocol & (Milter.P_NOMAIL | Milter.P_NR_MAIL)


def test_a_lapi_outage_leaves_logins_to_the_address_check() -> None:
    src = source()
    src.usable = False
    policy = make(src)
    assert policy.check_account("alice", "192.0.2.10") is None
