"""The index against a plain model, over a few overlapping networks: every sequence of adds
(both write paths, ids too big for a bucket), removals by id, sweeps and publishing must
leave lookups, counts and the decision list exactly what the model holds.

The address set is small on purpose: decisions share buckets, /16s, tables and networks,
so replacement by id, several decisions on one network and a range next to an address
all happen in nearly every example (random addresses over the whole space rarely meet).
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter

from crowdsec_milter.decisions import Decision, Network, network_text
from crowdsec_milter.index import DecisionIndex
from hypothesis import given, settings
from hypothesis import strategies as st

NETS = [ipaddress.ip_network(n) for n in (
    "10.0.0.1/32", "10.0.0.2/32", "10.0.1.2/32", "10.1.0.1/32",  # 10.0.x.x share a bucket
    "10.0.0.0/31", "10.0.0.0/24", "10.0.0.0/17", "10.0.0.0/16", "10.0.0.0/8", "0.0.0.0/0",
    "2001:db8::1/128", "2001:db8::2/128", "2001:db8::/64", "2001:db8::/32", "::/0",
)]
PROBES = [ipaddress.ip_address(a) for a in (
    "10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.2", "10.0.128.1", "10.1.0.1",
    "10.2.0.0", "11.0.0.1", "2001:db8::1", "2001:db8::2", "2001:db8:0:1::1", "2001:db9::1",
)]
KINDS = [("ban", "crowdsec", "ssh-bf"), ("captcha", "cscli", "manual"),
         ("custom", "lists", "blocklist"), ("ban", "lists", "blocklist")]
# ids a bucket holds, and ids past 64 bits, which go to the /32 table instead
IDS = [0, 1, 2, 3, 2**64, 2**64 + 1]
# seconds on the monotonic clock: stored rounded up to tenths, kept in [0, 2**44 tenths)
EXPIRIES = [-1.0, 0.0, 0.05, 1.0, 1.04, 1.1, 2.5, 100.0, 2e12]
TIMES = [0.0, 1.0, 1.05, 2.5, 50.0]
_EXP_MAX = (2**44 - 1) / 10.0

add_op = st.tuples(st.just("add"), st.integers(0, len(NETS) - 1), st.sampled_from(IDS),
                   st.integers(0, len(KINDS) - 1), st.booleans(), st.sampled_from(EXPIRIES))
remove_op = st.tuples(st.just("remove"), st.integers(0, len(NETS) - 1), st.sampled_from(IDS))
expire_op = st.tuples(st.just("expire"), st.sampled_from(TIMES))
publish_op = st.tuples(st.just("publish"))
OPS = st.lists(st.one_of(add_op, add_op, remove_op, expire_op, publish_op), max_size=30)


def _network(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Network:
    return Network(net.version, net.prefixlen, int(net.network_address))


def _stored(expires: float) -> float:
    """The expiry the index keeps: rounded up to a tenth, within its 44 bits."""
    return min(max(math.ceil(expires * 10.0), 0), 2**44 - 1) / 10.0


class Model:
    """What the index should hold: (network, id) -> the decision."""

    def __init__(self) -> None:
        self.held: dict[tuple[Network, int], Decision] = {}

    def add(self, d: Decision, net: Network) -> None:
        self.held[(net, d.id)] = d._replace(expires=_stored(d.expires))

    def remove(self, ident: int, net: Network) -> bool:
        return self.held.pop((net, ident), None) is not None

    def expire(self, now: float) -> int:
        gone = [k for k, d in self.held.items() if d.expires <= now]
        for k in gone:
            del self.held[k]
        return len(gone)

    def matches(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                now: float) -> list[tuple[Network, Decision]]:
        return [(net, d) for (net, _), d in self.held.items()
                if net.family == ip.version and d.expires > now
                and int(ip) >> ((32 if net.family == 4 else 128) - net.prefixlen)
                == net.number >> ((32 if net.family == 4 else 128) - net.prefixlen)]


def _decision(ident: int, net: Network, kind: int, range_scope: bool,
              expires: float) -> Decision:
    dtype, origin, scenario = KINDS[kind]
    full = net.prefixlen == (32 if net.family == 4 else 128)
    scope = "Range" if range_scope or not full else "Ip"
    return Decision(ident, dtype, scope, network_text(*net, scope), origin, scenario, expires)


def _probe_rank(net: Network, ident: int) -> float:
    """Which ban a lookup that stops at the first one reports: the longest prefix, except
    that an IPv4 /32 with an id past 64 bits (in the /32 table, not a bucket) is probed after
    the /16-/31 ranges of its /16. Either way a ban, so the verdict is the same."""
    if net.family == 4 and net.prefixlen == 32:
        return 33 if ident < 2**64 else 15.5
    return net.prefixlen


def _check(index: DecisionIndex, model: Model) -> None:
    assert len(index) == len(model.held)
    assert Counter(index.decisions()) == Counter(model.held.values())
    counts: Counter[tuple[str, int]] = Counter()
    kinds: Counter[tuple[tuple[str, str, str, str], int]] = Counter()
    for (net, _), d in model.held.items():
        counts[(d.scope, net.family)] += 1
        kinds[((d.type, d.scope, d.origin, d.scenario), net.family)] += 1
    assert index.counts() == dict(counts)
    assert sorted(index.held()) == sorted((meta, fam, n) for (meta, fam), n in kinds.items())
    for now in TIMES:
        for ip in PROBES:
            want = model.matches(ip, now)
            got = index.lookup(ip.version, int(ip), now)
            assert Counter(got) == Counter(d for _, d in want), (str(ip), now)
            order = [(d.severity, -d.expires) for d in got]
            assert order == sorted(order), (str(ip), now)
            if ip.version == 4:  # with the caller's text: the same decisions
                assert index.lookup(4, int(ip), now, True, str(ip)) == got
            first = index.lookup(ip.version, int(ip), now, complete=False)
            bans = [(_probe_rank(net, d.id), d) for net, d in want if d.type == "ban"]
            if bans:  # stops at the first ban it probes: the same verdict
                best = max(r for r, _ in bans)
                assert len(first) == 1 and first[0] in [d for r, d in bans if r == best]
            else:
                assert first == got


@settings(max_examples=150, deadline=None)
@given(ops=OPS, private=st.booleans())
def test_index_holds_what_the_model_holds(ops: list[tuple], private: bool) -> None:
    index = DecisionIndex(private=private)
    model = Model()
    for op in ops:
        if op[0] == "add":
            _, n, ident, kind, range_scope, expires = op
            net = _network(NETS[n])
            d = _decision(ident, net, kind, range_scope, expires)
            fast = net.family == 4 and net.prefixlen == 32 and ident % 2 == 1
            # add_ipv4 is the startup path for Ip decisions; it declines ids past 64 bits
            if fast and d.scope == "Ip":
                meta = (d.type, d.scope, d.origin, d.scenario)
                if not index.add_ipv4(ident, net.number, meta, expires):
                    assert ident >= 2**64
                    index.add(d, net)
            else:
                index.add(d, net)
            model.add(d, net)
        elif op[0] == "remove":
            net = _network(NETS[op[1]])
            assert index.remove(op[2], net) == model.remove(op[2], net)
        elif op[0] == "expire":
            assert index.expire(op[1]) == model.expire(op[1])
        else:
            index.publish()
        _check(index, model)


def test_expiry_is_kept_in_tenths_rounded_up_and_bounded() -> None:
    index = DecisionIndex()
    for ident, expires in enumerate([1.04, -5.0, 1e15]):
        net = Network(4, 32, 0x0A000001 + ident)
        index.add(Decision(ident, "ban", "Ip", "x", "o", "s", expires), net)
    assert sorted(d.expires for d in index.decisions()) == [0.0, 1.1, _EXP_MAX]
    # the startup path rounds the same way once the kind is known
    assert index.add_ipv4(7, 0x0A000009, ("ban", "Ip", "o", "s"), 1.04)
    assert index.add_ipv4(8, 0x0A00000A, ("ban", "Ip", "o", "s"), 1.0)
    found = {d.id: d.expires for d in index.decisions()}
    assert (found[7], found[8]) == (1.1, 1.0)


def test_the_startup_path_bounds_expiry_and_declines_ids_past_64_bits() -> None:
    index = DecisionIndex()
    meta = ("ban", "Ip", "o", "s")
    assert index.add_ipv4(1, 0x0A000001, meta, 60.0)  # the kind is known from here on
    assert index.add_ipv4(2, 0x0A000002, meta, -5.0)
    assert index.add_ipv4(3, 0x0A000003, meta, 1e15)
    assert not index.add_ipv4(2**64, 0x0A000004, meta, 60.0)
    assert len(index) == 3
    assert sorted((d.id, d.expires) for d in index.decisions()) == \
        [(1, 60.0), (2, 0.0), (3, _EXP_MAX)]
