"""The policy's counts, the fields a reply template sees, and reply/network parsing errors."""

from __future__ import annotations

import ipaddress

import pytest
from crowdsec_milter.policy import Action, Reply, parse_networks
from crowdsec_milter.settings import Settings
from crowdsec_milter.tally import Key, Tally
from crowdsec_milter.wiring import make_policy
from helpers import IndexSource, make

FIELDS = "ip=%(ip)s type=%(type)s scenario=%(scenario)s origin=%(origin)s"


def test_each_lookup_is_counted_by_outcome() -> None:
    src = IndexSource()
    src.add(1, "203.0.113.7")
    tally = Tally()
    policy = make_policy(Settings(), src, tally)
    policy.check("203.0.113.7")
    policy.check("203.0.113.8")
    policy.check("203.0.113.9")
    make_policy(Settings(), IndexSource(usable=False), tally).check("203.0.113.7")
    # the labels metrics publish
    assert tally.snapshot() == {Key("lookup", "match"): 1, Key("lookup", "clean"): 2,
                                Key("lookup", "unavailable"): 1}


def test_the_source_is_asked_with_the_address_text() -> None:
    src = IndexSource()
    make(src).check("2001:db8::1")
    assert src.asked == ["2001:db8::1"]


def test_a_decision_reply_sees_every_field() -> None:
    src = IndexSource()
    src.add(1, "203.0.113.7", scenario="crowdsecurity/postfix-spam")
    verdict = make(src, reject_reply=Reply("550", None, FIELDS)).check("203.0.113.7")
    assert verdict is not None and verdict.reason == "decision"
    assert verdict.reply == ("550", None, "ip=203.0.113.7 type=ban "
                             "scenario=crowdsecurity/postfix-spam origin=crowdsec")


def test_an_accept_verdict_has_no_reply() -> None:
    src = IndexSource()
    src.add(1, "203.0.113.7", type_="captcha")
    verdict = make(src, actions=(("captcha", Action.ACCEPT),)).check("203.0.113.7")
    assert verdict is not None and verdict.action is Action.ACCEPT
    assert verdict.reply is None and not verdict.enforce


@pytest.mark.parametrize("via", ["check", "unavailable"])
def test_the_unavailable_reply_sees_the_address_and_empty_fields(via: str) -> None:
    policy = make(IndexSource(usable=False), on_lapi_error=Action.TEMPFAIL,
                  unavailable_reply=Reply("451", "4.3.0", "[" + FIELDS + "]"))
    verdict = getattr(policy, via)("203.0.113.7")
    assert verdict is not None
    assert (verdict.action, verdict.reason, verdict.enforce) == (
        Action.TEMPFAIL, "lapi_unavailable", True)
    assert verdict.reply == ("451", "4.3.0", "[ip=203.0.113.7 type= scenario= origin=]")


def test_reply_fields_are_made_single_line_and_cut_at_100() -> None:
    reply = Reply("550", None, "%(scenario)s")
    assert reply.render({"scenario": "a\r\nb\x00c"}) == ("550", None, "a??b?c")
    assert reply.render({"scenario": "x" * 150})[2] == "x" * 100


def test_a_reply_keeps_its_enhanced_code() -> None:
    assert Reply.parse("550 5.7.1 go away", "5") == Reply("550", "5.7.1", "go away")
    assert Reply.parse(" 451 later ", "4") == Reply("451", None, "later")


@pytest.mark.parametrize(("spec", "first", "message"), [
    ("hello", "5", "not an SMTP reply 'CODE [X.Y.Z] text': 'hello'"),
    ("450 4.7.1 no", "5", "reply code must be 5xx: '450 4.7.1 no'"),
    ("550 4.7.1 no", "5", "enhanced code must start with 5: '550 4.7.1 no'"),
    ("550 5.7.1 %(host)s", "5",
     "reply text may use only %(ip)s %(type)s %(scenario)s %(origin)s: '550 5.7.1 %(host)s'"),
])
def test_bad_replies_are_named(spec: str, first: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Reply.parse(spec, first)
    assert str(info.value) == message


@pytest.mark.parametrize("text", ["%(ip)s %(type)s %(scenario)s %(origin)s", "%(ip)d"])
def test_reply_fields_accepted_or_refused_by_template_use(text: str) -> None:
    if text.endswith("d"):
        with pytest.raises(ValueError):
            Reply.parse(f"550 {text}", "5")
    else:
        assert Reply.parse(f"550 {text}", "5").text == text


def test_networks_take_host_bits_and_name_the_bad_one() -> None:
    assert parse_networks([" 10.1.2.3/8 ", "2001:db8::1/32"]) == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    with pytest.raises(ValueError) as info:
        parse_networks(["10.0.0.0/8", "nope"])
    assert str(info.value) == "not a network: 'nope'"


@pytest.mark.parametrize(("net", "inside", "outside"), [
    ("192.0.2.0/24", "192.0.2.255", "192.0.3.0"),
    ("192.0.2.7/32", "192.0.2.7", "192.0.2.6"),
    ("2001:db8::/127", "2001:db8::1", "2001:db8::2"),
])
def test_trusted_networks_cover_exactly_their_addresses(net: str, inside: str,
                                                        outside: str) -> None:
    src = IndexSource()
    src.add(1, inside)
    src.add(2, outside)
    policy = make(src, trusted_networks=(ipaddress.ip_network(net),))
    assert policy.check(inside) is None
    assert policy.check(outside) is not None


def test_among_decisions_with_the_same_action_the_first_one_is_reported() -> None:
    # two captchas: the longer-lived comes first from the index, and the reply names its
    # scenario
    src = IndexSource()
    src.add(1, "203.0.113.7", type_="captcha", scenario="short", duration="1h")
    src.add(2, "203.0.113.7", type_="captcha", scenario="long", duration="5h")
    verdict = make(src, tempfail_reply=Reply("451", None, "%(scenario)s")).check("203.0.113.7")
    assert verdict is not None and verdict.decision is not None
    assert verdict.decision.id == 2 and verdict.reply == ("451", None, "long")
