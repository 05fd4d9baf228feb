"""The policy: decisions to actions and replies, trusted networks, dry run, LAPI outages."""

from __future__ import annotations

import ipaddress

import pytest
from crowdsec_milter.policy import Action, Reply
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
