"""The decision index: addresses matched as numbers, ranges, several decisions per value."""

from __future__ import annotations

import ipaddress

from crowdsec_milter.decisions import Decision, Network, parse_address, parse_decision
from crowdsec_milter.index import DecisionIndex
from hypothesis import given, settings
from hypothesis import strategies as st

NOW = 1000.0


def add(index: DecisionIndex, ident: int, value: str, type_: str = "ban",
        scope: str = "Ip", duration: str = "1h") -> Decision:
    parsed = parse_decision({"id": ident, "type": type_, "scope": scope, "value": value,
                             "duration": duration, "origin": "cscli", "scenario": "s"}, NOW)
    assert parsed is not None
    index.add(*parsed)
    return parsed[0]


def look(index: DecisionIndex, ip: str, now: float = NOW) -> list[Decision]:
    key = parse_address(ip)
    assert key is not None
    return index.lookup(key[0], key[1], now)


def test_ip_ban_does_not_touch_a_string_superset_address() -> None:
    index = DecisionIndex()
    add(index, 1, "1.2.3.4")
    assert [d.id for d in look(index, "1.2.3.4")] == [1]
    for other in ("11.2.3.45", "1.2.3.40", "1.2.3.41", "21.2.3.4", "1.2.3.5"):
        assert look(index, other) == [], other


def test_ranges_v4_and_v6() -> None:
    index = DecisionIndex()
    add(index, 1, "10.9.0.0/16", scope="Range")
    add(index, 2, "2001:db8:1::/48", scope="Range")
    assert [d.id for d in look(index, "10.9.3.3")] == [1]
    assert look(index, "10.10.0.1") == []
    assert [d.id for d in look(index, "2001:db8:1:ffff::1")] == [2]
    assert look(index, "2001:db8:2::1") == []


def test_ipv4_mapped_client_matches_ipv4_decision() -> None:
    index = DecisionIndex()
    add(index, 1, "192.0.2.7")
    assert [d.id for d in look(index, "::ffff:192.0.2.7")] == [1]
    assert [d.id for d in look(index, "[::ffff:192.0.2.7]")] == [1]


def test_parse_address_forms() -> None:
    assert parse_address("192.0.2.1") == (4, 0xC0000201, "192.0.2.1")
    assert parse_address("IPv6:2001:db8::1") == parse_address("2001:db8::1")
    assert parse_address("fe80::1%eth0") == parse_address("fe80::1")
    assert parse_address("[::1]") == (6, 1, "::1")
    assert parse_address("::FFFF:192.0.2.1") == (4, 0xC0000201, "192.0.2.1")
    assert parse_address("[2001:DB8:0::1]") == (6, 0x20010DB8 << 96 | 1, "2001:db8::1")
    for bad in ("", "unknown", "localhost", "1.2.3", "1.2.3.4.5", "::g", "[1.2.3.4", "/tmp/s"):
        assert parse_address(bad) is None, bad


def test_several_decisions_on_one_value_are_kept_and_most_severe_wins() -> None:
    index = DecisionIndex()
    add(index, 1, "192.0.2.1", type_="captcha", duration="5h")
    add(index, 2, "192.0.2.1", type_="ban", duration="1h")
    add(index, 3, "192.0.2.0/24", type_="custom", scope="Range")
    assert len(index) == 3
    assert [d.type for d in look(index, "192.0.2.1")] == ["ban", "captcha", "custom"]
    assert index.remove(2, parse_decision({"id": 2, "type": "ban", "scope": "Ip",
                                           "value": "192.0.2.1", "duration": "0s"}, NOW)[1])
    assert [d.type for d in look(index, "192.0.2.1")] == ["captcha", "custom"]
    assert len(index) == 2


def test_incomplete_lookup_stops_at_the_first_ban_with_the_same_verdict() -> None:
    index = DecisionIndex()
    add(index, 1, "192.0.2.0/24", type_="captcha", scope="Range")
    add(index, 2, "192.0.2.1", type_="ban")
    add(index, 3, "192.0.2.0/16", type_="ban", scope="Range")
    key = parse_address("192.0.2.1")
    assert [d.id for d in index.lookup(key[0], key[1], NOW, complete=False)] == [2]  # type: ignore[index]
    key = parse_address("192.0.2.9")
    assert [d.id for d in index.lookup(key[0], key[1], NOW, complete=False)] == [3]  # type: ignore[index]
    add(index, 4, "192.0.2.9", type_="captcha")
    got = index.lookup(key[0], key[1], NOW, complete=False)  # type: ignore[index]
    assert got[0].type == "ban"


def test_same_id_replaces_and_unknown_id_is_a_no_op() -> None:
    index = DecisionIndex()
    add(index, 1, "192.0.2.1", duration="1h")
    add(index, 1, "192.0.2.1", duration="2h")
    assert len(index) == 1
    assert look(index, "192.0.2.1")[0].expires == NOW + 7200
    net = parse_decision({"id": 9, "type": "ban", "scope": "Ip", "value": "192.0.2.1",
                          "duration": "0s"}, NOW)[1]
    assert not index.remove(9, net)
    assert len(look(index, "192.0.2.1")) == 1


def test_decisions_expire_by_their_own_duration() -> None:
    index = DecisionIndex()
    add(index, 1, "192.0.2.1", duration="10s")
    add(index, 2, "192.0.2.1", duration="100s")
    add(index, 3, "198.51.100.0/24", scope="Range", duration="10s")
    assert [d.id for d in look(index, "192.0.2.1", NOW + 5)] == [2, 1]
    assert [d.id for d in look(index, "192.0.2.1", NOW + 50)] == [2]
    assert look(index, "198.51.100.9", NOW + 50) == []
    assert index.expire(NOW + 50) == 2
    assert len(index) == 1
    assert index.counts() == {("Ip", 4): 1}


def _ref_match(decisions: list[tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network]],
               ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> set[int]:
    return {i for i, net in decisions if net.version == ip.version and ip in net}


v4net = st.builds(lambda n, p: ipaddress.ip_network((n, p), strict=False),
                  st.integers(0, 2**32 - 1), st.integers(0, 32))
v6net = st.builds(lambda n, p: ipaddress.ip_network((n, p), strict=False),
                  st.integers(0, 2**128 - 1), st.integers(0, 128))


@settings(max_examples=300, deadline=None)
@given(
    nets=st.lists(st.one_of(v4net, v6net), max_size=25),
    probes=st.lists(st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                              st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)),
                    max_size=20),
    removals=st.lists(st.integers(0, 24), max_size=8),
    private=st.booleans(),
    short=st.sets(st.integers(0, 24), max_size=8),
    sweep=st.booleans(),
)
def test_index_agrees_with_brute_force(nets, probes, removals, private, short, sweep) -> None:
    # both write paths: in place (a private index, startup) and copy-on-write (published)
    index = DecisionIndex(private=private)
    held = []
    for i, net in enumerate(nets):
        if net.version == 6 and net.network_address.ipv4_mapped is not None:
            continue  # mapped ranges are folded to IPv4, covered elsewhere
        scope = "Ip" if net.prefixlen == net.max_prefixlen else "Range"
        add(index, i, str(net.network_address) if scope == "Ip" else str(net), scope=scope,
            type_="captcha" if i % 3 else "ban", duration="10s" if i in short else "1h")
        held.append((i, net))
    if sweep:  # the short-lived ones go, and with them their /16 probes
        index.expire(NOW + 50)
        held = [(i, net) for i, net in held if i not in short]
    for r in removals:
        for i, net in held:
            if i == r:
                scope = "Ip" if net.prefixlen == net.max_prefixlen else "Range"
                value = str(net.network_address) if scope == "Ip" else str(net)
                parsed = parse_decision({"id": i, "type": "ban", "scope": scope,
                                         "value": value, "duration": "0s"}, NOW)
                assert index.remove(i, parsed[1])
        held = [(i, net) for i, net in held if i != r]
    # probe inside each held network too, not only at random
    probes = probes + [net.network_address for _, net in held] + \
        [net.broadcast_address for _, net in held]
    for ip in probes:
        if ip.version == 6 and ip.ipv4_mapped is not None:
            continue
        got = {d.id for d in look(index, str(ip))}
        assert got == _ref_match(held, ip), str(ip)
    assert len(index) == len(held)
    # the counts the writers keep equal a count of what is held
    brute: dict[tuple[str, int], int] = {}
    for d in index.decisions():
        family = 6 if ":" in d.value else 4
        brute[(d.scope, family)] = brute.get((d.scope, family), 0) + 1
    assert index.counts() == brute


def test_a_low_half_straddling_two_entries_is_no_match() -> None:
    # 10.0.1.2 and 10.0.3.4 share a bucket; their low halves side by side hold the bytes of
    # 10.0.4.1's (or 10.0.2.3's, by byte order) at an odd offset
    index = DecisionIndex()
    add(index, 10**9 << 20, "10.0.1.2")  # an id whose bits, misread, look like a live entry
    add(index, 2, "10.0.3.4")
    assert look(index, "10.0.4.1") == [] and look(index, "10.0.2.3") == []
    assert [d.id for d in look(index, "10.0.3.4")] == [2]


def test_the_callers_canonical_text_is_the_value_of_an_address_hit() -> None:
    index = DecisionIndex()
    add(index, 1, "192.0.2.77")
    family, number, text = parse_address("::ffff:192.0.2.77")  # type: ignore[misc]
    with_text = index.lookup(family, number, NOW, False, text)
    assert with_text == index.lookup(family, number, NOW, False)
    assert with_text[0].value == "192.0.2.77"


def _net(value: str) -> Network:
    parsed = ipaddress.ip_network(value)
    return Network(parsed.version, parsed.prefixlen, int(parsed.network_address))


def test_removal_by_id_at_the_edges_of_the_id_range() -> None:
    # id 0 and the first id past 64 bits sit in different structures; both go by their id
    index = DecisionIndex()
    add(index, 0, "192.0.2.1")
    add(index, 2**64, "192.0.2.2")
    add(index, 2**64 - 1, "192.0.2.3")
    for ident, value in ((0, "192.0.2.1"), (2**64, "192.0.2.2"), (2**64 - 1, "192.0.2.3")):
        assert [d.id for d in look(index, value)] == [ident]
        assert index.remove(ident, _net(value)), ident
        assert look(index, value) == [], value
    assert len(index) == 0 and index.counts() == {}


def test_removing_one_range_keeps_the_others_of_its_16_matching() -> None:
    index = DecisionIndex()
    add(index, 1, "10.0.0.0/24", scope="Range")
    add(index, 2, "10.0.1.0/24", scope="Range")
    add(index, 3, "10.0.0.0/20", scope="Range")
    assert index.remove(1, _net("10.0.0.0/24"))
    assert [d.id for d in look(index, "10.0.1.5")] == [2, 3]
    assert index.remove(2, _net("10.0.1.0/24"))
    assert [d.id for d in look(index, "10.0.1.5")] == [3]


def test_removing_an_ipv6_range_leaves_ipv4_ranges_with_the_same_top_bits() -> None:
    # 2001::/20 and 32.1.0.0/20 share their top 16 bits (0x2001) and prefix length
    index = DecisionIndex()
    add(index, 1, "32.1.0.0/20", scope="Range")
    add(index, 2, "2001::/20", scope="Range")
    assert index.remove(2, _net("2001::/20"))
    assert [d.id for d in look(index, "32.1.0.5")] == [1]
    assert look(index, "2001::5") == []


def test_a_sweep_finds_a_short_ban_behind_a_long_one_with_a_large_id() -> None:
    # the same bucket (10.0.0.x): a long ban first, then a short one with a 40-bit id
    for private in (False, True):
        index = DecisionIndex(private=private)
        add(index, 1, "10.0.0.1", duration="1h")
        add(index, 10**12, "10.0.0.2", duration="10s")
        add(index, 2**64 - 1, "10.0.0.3", duration="1h")  # the largest id a bucket holds
        add(index, 5, "10.1.0.1", duration="10s")  # another bucket
        assert index.expire(NOW + 50) == 2, private
        assert len(index) == 2
        assert sorted((d.id, d.value) for d in index.decisions()) == \
            [(1, "10.0.0.1"), (2**64 - 1, "10.0.0.3")]
        assert look(index, "10.0.0.2", NOW) == [] and look(index, "10.1.0.1", NOW) == []


def test_listing_decisions_while_the_index_changes_pairs_each_with_its_address() -> None:
    # readers take no lock: a listing under way keeps the bucket it was reading, also in an
    # index built privately and then published
    for private in (False, True):
        index = DecisionIndex(private=True) if private else DecisionIndex()
        for i in range(1, 5):
            add(index, i, f"10.0.0.{i}")
        if private:
            index.publish()
        assert index.remove(4, _net("10.0.0.4"))
        listing = index.decisions()
        first = next(listing)
        assert index.remove(first.id, _net(first.value))
        rest = list(listing)
        assert sorted((d.id, d.value) for d in [first, *rest]) == \
            [(1, "10.0.0.1"), (2, "10.0.0.2"), (3, "10.0.0.3")], private


def test_a_sweep_keeps_every_live_decision_on_a_range() -> None:
    for keep in (2, 3):
        index = DecisionIndex()
        for i in range(1, keep + 1):
            add(index, i, "10.0.0.0/24", scope="Range", duration=f"{i}h")
        add(index, 9, "10.0.0.0/24", scope="Range", duration="10s")
        assert index.expire(NOW + 50) == 1
        assert [d.id for d in look(index, "10.0.0.7", NOW + 50)] == list(range(keep, 0, -1))
        assert len(index) == keep


def test_an_ipv6_range_expiring_leaves_ipv4_ranges_with_the_same_top_bits() -> None:
    index = DecisionIndex()
    add(index, 1, "32.1.0.0/20", scope="Range")
    add(index, 2, "2001::/20", scope="Range", duration="10s")
    assert index.expire(NOW + 50) == 1
    assert [d.id for d in look(index, "32.1.0.5", NOW + 50)] == [1]


def test_a_sweep_emptying_one_range_of_a_16_keeps_the_others_matching() -> None:
    index = DecisionIndex()
    add(index, 1, "10.0.0.0/24", scope="Range", duration="10s")
    add(index, 2, "10.0.1.0/24", scope="Range")
    assert index.expire(NOW + 50) == 1
    assert [d.id for d in look(index, "10.0.1.5", NOW + 50)] == [2]


def test_a_verdict_lookup_reports_the_most_specific_ban() -> None:
    # the decision named in the log and the event is the narrowest range that bans
    index = DecisionIndex()
    add(index, 1, "10.0.0.0/17", scope="Range")
    add(index, 2, "10.0.0.0/24", scope="Range")
    add(index, 3, "10.0.0.0/20", scope="Range")
    key = parse_address("10.0.0.9")
    assert [d.id for d in index.lookup(key[0], key[1], NOW, complete=False)] == [2]  # type: ignore[index]


def test_every_decision_on_an_address_is_found_among_its_bucket() -> None:
    index = DecisionIndex()
    add(index, 1, "192.0.2.1", type_="captcha", duration="3h")
    add(index, 9, "192.0.2.2")
    add(index, 2, "192.0.2.1", type_="captcha", duration="2h")
    add(index, 3, "192.0.2.1", type_="captcha", duration="1h")
    assert [d.id for d in look(index, "192.0.2.1")] == [1, 2, 3]


def test_a_straddling_match_does_not_hide_the_entry_right_after_it() -> None:
    # low halves 0xa105 and 0x05a1 then 0x0505: one of the first two ends in 0x05 whatever
    # the byte order, so 0x0505's bytes also appear at an odd offset before its own entry
    index = DecisionIndex()
    add(index, 1, "10.0.161.5")
    add(index, 2, "10.0.5.161")
    add(index, 3, "10.0.5.5")
    assert [d.id for d in look(index, "10.0.5.5")] == [3]


def test_an_index_filled_privately_counts_and_finds_what_it_was_given() -> None:
    # the startup path: decisions appended in place to buckets nobody reads yet
    index = DecisionIndex(private=True)
    add(index, 1, "5.0.0.1")  # bucket 5.0/16: the top 17 bits of 10.0.x.x name it
    add(index, 2, "10.0.0.2")
    add(index, 3, "10.0.0.3", type_="captcha")
    add(index, 4, "10.0.0.4")
    add(index, 5, "10.0.0.2", type_="captcha")
    for when in ("private", "published"):
        assert len(index) == 5, when
        assert index.counts() == {("Ip", 4): 5}, when
        assert sorted((kind[0], n) for kind, _, n in index.held()) == \
            [("ban", 3), ("captcha", 2)], when
        assert [d.id for d in look(index, "10.0.0.2")] == [2, 5], when
        assert [d.id for d in look(index, "10.0.0.4")] == [4], when
        assert look(index, "5.0.0.2") == [], when
        index.publish()


def test_replacing_a_range_decision_by_id_keeps_the_counts_of_its_kind() -> None:
    index = DecisionIndex()
    add(index, 1, "10.0.0.0/24", scope="Range")
    add(index, 2, "10.1.0.0/24", scope="Range")
    add(index, 1, "10.0.0.0/24", scope="Range", duration="2h")
    assert len(index) == 2
    assert index.counts() == {("Range", 4): 2}
    assert [n for _, _, n in index.held()] == [2]
