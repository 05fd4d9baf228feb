"""The policy: decisions to actions and replies, trusted networks, dry run, LAPI outages."""

from __future__ import annotations

import ipaddress

import pytest
from crowdsec_milter.policy import Action, Reply
from crowdsec_milter.selection import ActionRules, Selection
from helpers import IndexSource, make


def test_ban_is_rejected_with_the_configured_reply() -> None:
    src = IndexSource()
    src.add(1, "203.0.113.7")
    verdict = make(src).check("203.0.113.7")
    assert verdict is not None and verdict.enforce
    assert verdict.action is Action.REJECT
    assert verdict.reply == ("550", "5.7.1", "203.0.113.7 is blocked by CrowdSec")
    assert make(src).check("203.0.113.8") is None


def test_captcha_tempfails_and_ban_wins_over_captcha() -> None:
    src = IndexSource()
    src.add(1, "203.0.113.7", type_="captcha")
    verdict = make(src).check("203.0.113.7")
    assert verdict is not None and verdict.action is Action.TEMPFAIL
    assert verdict.reply is not None and verdict.reply[0] == "451"
    src.add(2, "203.0.113.0/24", type_="ban", scope="Range")
    verdict = make(src).check("203.0.113.7")
    assert verdict is not None and verdict.action is Action.REJECT
    assert verdict.decision is not None and verdict.decision.scope == "Range"


def test_unlisted_types_get_the_default_action_and_accept_is_log_only() -> None:
    src = IndexSource()
    src.add(1, "203.0.113.7", type_="throttle")
    assert make(src).check("203.0.113.7").action is Action.REJECT  # type: ignore[union-attr]
    policy = make(src, default_action=Action.ACCEPT)
    verdict = policy.check("203.0.113.7")
    assert verdict is not None and verdict.action is Action.ACCEPT and not verdict.enforce
    policy = make(src, actions=(("throttle", Action.DROP),))
    verdict = policy.check("203.0.113.7")
    assert verdict is not None and verdict.action is Action.DROP
    assert verdict.reply is not None and verdict.reply[0] == "421"


def test_trusted_networks_are_never_blocked_nor_looked_up() -> None:
    src = IndexSource()
    src.add(1, "127.0.0.1")
    src.add(2, "0.0.0.0/0", scope="Range")
    src.add(3, "::/0", scope="Range")
    policy = make(src, trusted_networks=(ipaddress.ip_network("127.0.0.0/8"),
                                         ipaddress.ip_network("::1/128"),
                                         ipaddress.ip_network("2001:db8::/32")))
    for ip in ("127.0.0.1", "127.9.9.9", "::1", "2001:db8::5", "::ffff:127.0.0.1"):
        assert policy.check(ip) is None, ip
    assert "127.0.0.1" not in src.asked
    assert policy.check("198.51.100.1") is not None
    assert policy.check("2001:db9::1") is not None


@pytest.mark.parametrize(("ip", "trusted"), [
    ("127.0.0.0", True), ("127.0.0.1", True), ("127.128.0.1", True), ("127.255.255.255", True),
    ("::1", True), ("::ffff:127.0.0.1", True), ("::ffff:127.255.255.255", True),
    ("126.255.255.255", False), ("128.0.0.0", False), ("::", False), ("::2", False),
    ("::ffff:128.0.0.0", False), ("fe80::1", False),
])
def test_default_trusted_networks_cover_loopback_and_nothing_beside(ip: str,
                                                                    trusted: bool) -> None:
    """Every default trusted network, at its edges, and the addresses just outside: a
    loopback client is never looked up, its neighbours are."""
    src = IndexSource()
    src.add(1, "0.0.0.0/0", scope="Range")
    src.add(2, "::/0", scope="Range")
    verdict = make(src).check(ip)  # make() passes Settings().trusted_networks
    if trusted:
        assert verdict is None and src.asked == [], ip
    else:
        assert verdict is not None and verdict.action is Action.REJECT, ip
        assert src.asked, ip


def test_dry_run_decides_but_does_not_enforce() -> None:
    src = IndexSource()
    src.add(1, "203.0.113.7")
    verdict = make(src, dry_run=True).check("203.0.113.7")
    assert verdict is not None and verdict.action is Action.REJECT and not verdict.enforce


def test_lapi_unavailable_follows_on_lapi_error() -> None:
    src = IndexSource(usable=False)
    assert make(src).check("203.0.113.7") is None
    verdict = make(src, on_lapi_error=Action.TEMPFAIL).check("203.0.113.7")
    assert verdict is not None and verdict.enforce and verdict.decision is None
    assert verdict.reply is not None and verdict.reply[0] == "451"
    assert verdict.reason == "lapi_unavailable"


def test_clients_without_an_ip_are_not_looked_up() -> None:
    src = IndexSource()
    for ip in ("", "unknown", "/var/run/x.sock", "localhost"):
        assert make(src).check(ip) is None
    assert src.asked == []


def test_reply_fields_cannot_break_the_reply() -> None:
    src = IndexSource()
    src.add(1, "203.0.113.7", scenario="evil\r\n250 ok %s 100%")
    policy = make(src, reject_reply=Reply.parse("550 5.7.1 %(scenario)s", "5"))
    verdict = policy.check("203.0.113.7")
    assert verdict is not None and verdict.reply is not None
    text = verdict.reply[2]
    assert "\r" not in text and "\n" not in text
    assert "100%%" in text and "%s" not in text.replace("%%", "")


@pytest.mark.parametrize(
    ("spec", "digit"),
    [("450 4.7.1 x", "5"), ("550 4.7.1 x", "5"), ("55 5.7.1 x", "5"), ("550", "5"),
     ("550 5.7.1 %(nope)s", "5"), ("550 5.7.1 %d", "5"), ("abc", "4")],
)
def test_bad_reply_specs_are_refused(spec: str, digit: str) -> None:
    with pytest.raises(ValueError):
        Reply.parse(spec, digit)


def test_reply_without_enhanced_code() -> None:
    reply = Reply.parse("554 go away %(ip)s", "5")
    assert reply.render({"ip": "192.0.2.1"}) == ("554", None, "go away 192.0.2.1")


def test_an_unselected_decision_never_hides_a_selected_one() -> None:
    """The index stops at the first ban unless asked not to: with a selection it is asked,
    so a longer unselected ban on the address does not hide a shorter selected one."""
    src = IndexSource()
    src.add(1, "203.0.113.7", scenario="web-scan", duration="4h")
    src.add(2, "203.0.113.7", scenario="manual", duration="1h")
    src.add(3, "203.0.113.8", scenario="crowdsecurity/http-probing")
    policy = make(src, scenarios_not_containing=("WEB-SCAN", "http"))
    verdict = policy.check("203.0.113.7")
    assert verdict is not None and verdict.decision is not None
    assert (verdict.action, verdict.decision.id) == (Action.REJECT, 2)
    assert policy.check("203.0.113.8") is None


def test_origins_and_scenarios_containing_select() -> None:
    src = IndexSource()
    src.add(1, "203.0.113.7", origin="CAPI", scenario="crowdsecurity/ssh-bf")
    src.add(2, "203.0.113.8", origin="cscli", scenario="crowdsecurity/postfix-spam")
    only_capi = make(src, origins=("capi",))
    assert only_capi.check("203.0.113.7") is not None
    assert only_capi.check("203.0.113.8") is None
    postfix = make(src, scenarios_containing=("POSTFIX", "smtp"))
    assert postfix.check("203.0.113.7") is None
    assert postfix.check("203.0.113.8") is not None
    sel = Selection.of(["crowdsec"], ["spam"], ["test"])
    assert sel.why_not("CAPI", "spam") == "--origins"
    assert sel.why_not("crowdsec", "ssh") == "--scenarios-containing"
    assert sel.why_not("crowdsec", "spam-test") == "--scenarios-not-containing"
    assert sel.why_not("crowdsec", "spam") is None


def test_the_most_specific_key_wins_per_decision_and_the_most_severe_per_client() -> None:
    src = IndexSource()
    src.add(1, "203.0.113.1", origin="CAPI", scenario="crowdsecurity/http-probing")
    src.add(2, "203.0.113.2", origin="CAPI", scenario="crowdsecurity/ssh-bf")
    src.add(3, "203.0.113.3", origin="cscli", scenario="manual")
    src.add(4, "203.0.113.4", origin="CAPI", scenario="crowdsecurity/HTTP-bad-UA")
    src.add(5, "203.0.113.4", origin="CAPI", scenario="crowdsecurity/ssh-bf",
            duration="10m")  # tempfail beats tag
    src.add(6, "203.0.113.5", origin="CAPI", scenario="x-http-y", type_="captcha")
    src.add(7, "203.0.113.5", origin="cscli", scenario="manual", type_="captcha",
            duration="5m")  # captcha=reject beats a ban's tag, though a ban comes first
    actions = {"ban": Action.REJECT, "captcha": Action.REJECT, "origin:capi": Action.TEMPFAIL,
               "scenario:*http*": Action.TAG}
    policy = make(src, actions=tuple(actions.items()))
    got = {ip: policy.check(ip) for ip in
           ("203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4", "203.0.113.5")}
    assert {ip: (v.action, v.key, v.decision.id) for ip, v in got.items()} == {  # type: ignore[union-attr]
        "203.0.113.1": (Action.TAG, "scenario:*http*", 1),
        "203.0.113.2": (Action.TEMPFAIL, "origin:capi", 2),
        "203.0.113.3": (Action.REJECT, "ban", 3),
        "203.0.113.4": (Action.TEMPFAIL, "origin:capi", 5),
        "203.0.113.5": (Action.REJECT, "captcha", 7),
    }
    tag = got["203.0.113.1"]
    assert tag is not None and tag.enforce and tag.reply is None
    assert not make(src, actions=tuple(actions.items()), dry_run=True).check("203.0.113.1").enforce  # type: ignore[union-attr]


def test_first_ban_shortcut_only_when_it_settles_the_verdict() -> None:
    src = IndexSource()
    src.add(1, "203.0.113.9", type_="ban", duration="4h")
    src.add(2, "203.0.113.9", type_="captcha", duration="1h")
    verdict = make(src, actions=(("ban", Action.TAG), ("captcha", Action.REJECT))).check(
        "203.0.113.9")
    assert verdict is not None and (verdict.action, verdict.decision.id) == (Action.REJECT, 2)  # type: ignore[union-attr]
    assert ActionRules.of({"ban": Action.REJECT, "captcha": Action.TEMPFAIL},
                          Action.REJECT).first_ban_decides
    assert not ActionRules.of({"ban": Action.TAG}, Action.REJECT).first_ban_decides
    assert not ActionRules.of({"origin:capi": Action.TAG}, Action.TAG).first_ban_decides


def test_the_readme_worked_example() -> None:
    """README, Choosing decisions: community blocklist tempfails, local bans reject,
    web-scan scenarios tag."""
    from crowdsec_milter.cli import parse_actions

    actions = dict(parse_actions(["ban=reject", "origin:CAPI=tempfail",
                                  "origin:lists=tempfail", "scenario:*http*=tag",
                                  "scenario:*web-scan*=tag"]))
    src = IndexSource()
    src.add(1, "203.0.113.9", origin="CAPI", scenario="crowdsecurity/http-probing")
    src.add(2, "203.0.113.10", origin="CAPI", scenario="crowdsecurity/ssh-bf")
    src.add(3, "203.0.113.11", origin="crowdsec", scenario="crowdsecurity/postfix-spam")
    src.add(4, "203.0.113.11", origin="CAPI", scenario="crowdsecurity/ssh-bf", duration="9h")
    policy = make(src, actions=tuple(actions.items()))
    assert [policy.check(f"203.0.113.{n}").action for n in (9, 10, 11)] == [  # type: ignore[union-attr]
        Action.TAG, Action.TEMPFAIL, Action.REJECT]
