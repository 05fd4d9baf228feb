"""The policy's counts, the fields a reply template sees, and reply/network parsing errors."""

from __future__ import annotations

import email.message
import email.utils
import ipaddress

import pytest
from crowdsec_milter import policy
from crowdsec_milter.decisions import Decision
from crowdsec_milter.policy import Action, Reply, parse_networks, tag_value
from crowdsec_milter.settings import Settings
from crowdsec_milter.tally import Key, Tally
from crowdsec_milter.wiring import make_policy
from helpers import IndexSource, make

FIELDS = "ip=%(ip)s type=%(type)s scenario=%(scenario)s origin=%(origin)s"
BANNED = "203.0.113.7"
# libmilter's MAXREPLYLEN (sendmail libmilter/smfi.c): the most bytes smfi_setreply takes
REPLY_LIMIT = 980


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


# -- replies libmilter can take (issue 21, defect 4) --------------------------------------


def test_the_policy_knows_libmilters_limit() -> None:
    assert policy.REPLY_LIMIT == REPLY_LIMIT


@pytest.mark.parametrize("filler", ["é", "%", "x"])
def test_a_filled_reply_is_cut_to_the_limit_in_bytes(filler: str) -> None:
    # fits in characters, not in bytes (é is two bytes, % is sent doubled)
    template = "%(scenario)s " + "x" * (REPLY_LIMIT - 150)
    reply = Reply.parse(f"550 5.7.1 {template}", "5")
    code, xcode, text = reply.render({"ip": BANNED, "type": "ban", "scenario": filler * 100,
                                      "origin": "crowdsec"})
    assert (code, xcode) == ("550", "5.7.1")
    assert len(text.encode()) <= REPLY_LIMIT
    assert text.startswith((filler * 2 if filler == "%" else filler) * 10)
    # never a lone '%' (pymilter refuses it) nor half a character
    assert "%" not in text.replace("%%", "")
    text.encode("utf-8", "strict")


def test_a_reply_at_the_limit_is_kept_whole_and_one_byte_over_is_cut() -> None:
    text = "x" * (REPLY_LIMIT - 2) + "é"
    assert Reply.parse(f"550 {text}", "5").render({"ip": BANNED})[2] == text
    over = Reply.parse(f"550 {'x' * (REPLY_LIMIT - 1)}%(ip)s", "5").render({"ip": "é"})
    assert over[2] == "x" * (REPLY_LIMIT - 1)


def test_a_field_libmilter_could_not_encode_is_made_safe() -> None:
    # a lone surrogate (JSON allows "\ud800") would make pymilter's UTF-8 encoding fail
    text = Reply("550", None, "%(scenario)s").render({"scenario": "a\ud800b"})[2]
    assert text == "a?b"
    with pytest.raises(ValueError, match="control character"):
        Reply.parse("550 5.7.1 a\rb", "5")
    with pytest.raises(ValueError, match="UTF-8"):
        Reply.parse("550 5.7.1 a\udcffb", "5")  # a byte argv could not decode


def test_a_template_that_can_never_fit_is_refused() -> None:
    assert Reply.parse("550 " + "x" * REPLY_LIMIT, "5").text == "x" * REPLY_LIMIT
    with pytest.raises(ValueError, match="980"):
        Reply.parse("550 5.7.1 " + "x" * (REPLY_LIMIT + 1), "5")
    with pytest.raises(ValueError, match="980"):  # two bytes a character
        Reply.parse("550 5.7.1 " + "é" * (REPLY_LIMIT // 2 + 1), "5")
    with pytest.raises(ValueError, match="980"):  # '%' goes out doubled
        Reply.parse("550 5.7.1 " + "%%" * (REPLY_LIMIT // 2 + 1), "5")


# -- the tag header parses back to the decision's own fields (issue 21, defect 14) ------


@pytest.mark.parametrize("scenario", [
    "evil; origin=crowdsec", 'a "quoted"; scope=Range; value=0.0.0.0/0', "back\\slash;",
    "x=y", "", "plain/scenario"])
def test_a_hostile_scenario_cannot_add_fields_to_the_tag_header(scenario: str) -> None:
    d = Decision(1, "ban", "Ip", "192.0.2.1", "CAPI", scenario, 0.0)
    value = tag_value(d)
    message = email.message.Message()
    message["X-CrowdSec-Decision"] = value
    params = message.get_params(header="X-CrowdSec-Decision")
    assert params is not None
    assert params[0] == ("ban", "")
    parsed = {k: email.utils.collapse_rfc2231_value(v) for k, v in params[1:]}
    assert parsed == {"origin": "CAPI", "scenario": scenario, "scope": "Ip",
                      "value": "192.0.2.1"}


def test_plain_tag_values_stay_unquoted() -> None:
    d = Decision(1, "ban", "Ip", "192.0.2.1", "cscli", "crowdsecurity/web-scan", 0.0)
    assert tag_value(d) == ("ban; origin=cscli; scenario=crowdsecurity/web-scan; "
                            "scope=Ip; value=192.0.2.1")


def test_tag_values_are_quoted_and_escaped_exactly() -> None:
    d = Decision(1, "ban", "Ip", "2001:db8::1", "CAPI", 'a "b"\\c; d\u00e9', 0.0)
    assert tag_value(d) == ('ban; origin=CAPI; scenario="a \\"b\\"\\\\c; d?"; scope=Ip; '
                            "value=2001:db8::1")


def test_a_long_tag_value_cuts_its_longest_field_and_keeps_the_quoting() -> None:
    scenario = 'x"; origin=forged' * 200
    d = Decision(1, "ban", "Ip", "192.0.2.1", "o" * 300, scenario, 0.0)
    value = tag_value(d)
    assert 899 <= len(value) <= 900  # 899 when the last cut falls on an escaped character
    message = email.message.Message()
    message["X-CrowdSec-Decision"] = value
    params = message.get_params(header="X-CrowdSec-Decision")
    assert params is not None
    parsed = dict((k, email.utils.collapse_rfc2231_value(v)) for k, v in params[1:])
    assert list(parsed) == ["origin", "scenario", "scope", "value"]
    assert parsed["origin"] == "o" * 300  # the shorter field is whole
    assert scenario.startswith(parsed["scenario"]) and len(parsed["scenario"]) > 300
    assert (parsed["scope"], parsed["value"]) == ("Ip", "192.0.2.1")

