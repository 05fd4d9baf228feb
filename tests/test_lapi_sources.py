"""The LAPI client and both decision sources, against a real HTTP server that speaks the
LAPI contract (tests/lapi_server.py), including the faults a real CrowdSec cannot make."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest
from crowdsec_milter import __version__
from crowdsec_milter.decisions import parse_address
from crowdsec_milter.lapi import LapiClient, LapiError
from crowdsec_milter.metrics import MilterCollector
from crowdsec_milter.source import LiveSource, StreamSource
from crowdsec_milter.tally import Tally
from lapi_server import FakeLapi, Fault
from milter_process import metric
from prometheus_client import CollectorRegistry, generate_latest
from waiting import eventually


def key(ip: str) -> tuple[int, int]:
    k = parse_address(ip)
    assert k is not None
    return k[0], k[1]


def client(url: str, key_: str = "test-key", timeout: float = 2.0, **kw) -> LapiClient:
    return LapiClient(url, key_, timeout, **kw)


def test_headers_and_null_lists(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    assert list(client(url).stream_items(True)) == []  # LAPI's null lists: nothing
    _, query, headers = lapi.requests[-1]
    assert query["startup"] == ["true"]
    assert headers["X-Api-Key"] == "test-key"
    # CrowdSec's bouncer guidelines: crowdsec-<name>-bouncer/vX.Y.Z
    assert headers["User-Agent"] == f"crowdsec-milter-bouncer/v{__version__}"
    assert client(url).query("192.0.2.1") == []


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault(status=403, body=b'{"message":"access forbidden"}'), "auth"),
        (Fault(status=500), "http"),
        (Fault(body=b'{"new": [1, 2'), "decode"),
        (Fault(body=b"<html>"), "decode"),
        (Fault(body=b'{"new": {"a": 1}}'), "decode"),
        (Fault(body=b'[1, 2]'), "decode"),
        (Fault(delay=1.0), "timeout"),
        (Fault(hang=True), "timeout"),
    ],
)
def test_faults_become_one_lapi_error(fake_lapi: tuple[FakeLapi, str], fault: Fault,
                                      kind: str) -> None:
    lapi, url = fake_lapi
    lapi.fault = fault
    # Only the slow faults need a short deadline: with 0.3 s for all, a loaded machine
    # turned an HTML answer into a timeout.
    with pytest.raises(LapiError) as err:
        list(client(url, timeout=0.3 if kind == "timeout" else 10.0).stream_items(False))
    assert err.value.kind == kind
    assert "test-key" not in str(err.value)


def test_wrong_key_is_auth_error_without_the_key(fake_lapi: tuple[FakeLapi, str]) -> None:
    _, url = fake_lapi
    with pytest.raises(LapiError) as err:
        list(client(url, key_="secret-wrong-key").stream_items(True))
    assert err.value.kind == "auth" and "secret-wrong-key" not in str(err.value)


@pytest.mark.parametrize("bad_key", ["first-half-of-key\nsecond-half-of-key",
                                     "first-half-of-key\r\nsecond-half-of-key"])
def test_a_key_that_is_no_header_value_never_reaches_the_error_text(
        fake_lapi: tuple[FakeLapi, str], bad_key: str) -> None:
    """The CLI refuses such keys; should one get here anyway, h11's complaint quotes the
    header value, and that must not carry the key into a log line."""
    _, url = fake_lapi
    c = client(url, bad_key)
    for call in (lambda: c.query("192.0.2.1"), lambda: list(c.stream_items(True)),
                 lambda: list(c.active_decisions())):
        with pytest.raises(LapiError) as err:
            call()
        assert "first-half" not in str(err.value) and "second-half" not in str(err.value)
        assert err.value.kind == "connect" and "<api-key>" in str(err.value)
    c.close()


def test_unreachable_lapi_is_a_connect_error() -> None:
    with pytest.raises(LapiError) as err:
        list(client("http://127.0.0.1:9/").stream_items(True))
    assert err.value.kind == "connect"


def test_oversized_answer_is_refused(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.fault = Fault(body=b'{"new": [' + b'{"x": 1},' * 20000 + b'{}]}')
    with pytest.raises(LapiError) as err:
        list(client(url, max_bytes=100_000).stream_items(True))
    assert err.value.kind == "too_large"


def test_active_decisions_listed_or_one_error(fake_lapi: tuple[FakeLapi, str]) -> None:
    """`check` counts these: the unfiltered list, read one decision at a time."""
    lapi, url = fake_lapi
    assert list(client(url).active_decisions()) == []  # LAPI's `null`
    lapi.add("203.0.113.7")
    lapi.add("10.9.0.0/16", scope="Range", type_="captcha")
    got = list(client(url).active_decisions())
    assert [(d["value"], d["type"]) for d in got] == [("203.0.113.7", "ban"),
                                                      ("10.9.0.0/16", "captcha")]
    assert "ip" not in lapi.requests[-1][1] and lapi.count("/v1/decisions/stream") == 0
    for body, kind in ((b'[{"id": 1, "sco', "decode"), (b'{"new": []}', "decode"),
                       (b"[" + b'{"x": 1},' * 20000 + b"{}]", "too_large")):
        lapi.fault = Fault(body=body)
        with pytest.raises(LapiError) as err:
            list(client(url, max_bytes=100_000).active_decisions())
        assert err.value.kind == kind


def test_stream_startup_then_deltas(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    a = lapi.add("203.0.113.7")
    lapi.add("10.9.0.0/16", scope="Range")
    lapi.add("2001:db8::/32", scope="Range", type_="captcha")
    src = StreamSource(client(url), 10.0)
    assert src.lookup(*key("203.0.113.7"), "203.0.113.7") is None  # not synced yet
    assert src.pull_once()
    assert [d.id for d in src.lookup(*key("203.0.113.7"), "")] == [a]
    assert src.lookup(*key("10.9.3.3"), "")[0].scope == "Range"
    assert src.lookup(*key("2001:db8::9"), "")[0].type == "captcha"
    assert src.lookup(*key("198.51.100.1"), "") == []
    b = lapi.add("198.51.100.1")
    lapi.delete(a)
    assert src.pull_once()
    assert lapi.requests[-1][1]["startup"] == ["false"]
    assert src.lookup(*key("203.0.113.7"), "") == []
    assert [d.id for d in src.lookup(*key("198.51.100.1"), "")] == [b]


def test_bad_answer_keeps_last_good_state_and_resyncs(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.add("203.0.113.7")
    src = StreamSource(client(url, timeout=0.5, startup_timeout=0.5), 10.0)
    assert src.pull_once()
    for fault in (Fault(body=b"garbage"), Fault(status=500), Fault(hang=True),
                  Fault(body=b'{"new": "x"}')):
        lapi.fault = fault
        assert not src.pull_once()
        assert len(src.lookup(*key("203.0.113.7"), "")) == 1
    lapi.fault = None
    c = lapi.add("198.51.100.1")
    assert src.pull_once()
    assert lapi.requests[-1][1]["startup"] == ["true"]  # full resync after failures
    assert [d.id for d in src.lookup(*key("198.51.100.1"), "")] == [c]


def test_bad_decisions_are_skipped_rest_used(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    good = lapi.add("203.0.113.7")
    for bad in ("not-an-ip", "1.2.3.4/33", "fe80::1%eth0"):
        lapi.add(bad)
    lapi.add("198.51.100.1", duration="-5s")
    lapi.add("198.51.100.2", duration="99999999h")
    lapi.add("FR", scope="Country")
    src = StreamSource(client(url), 10.0)
    assert src.pull_once()
    assert len(src.index) == 1  # the negative-duration one is never stored
    assert [d.id for d in src.lookup(*key("203.0.113.7"), "")] == [good]
    assert src.lookup(*key("198.51.100.1"), "") == []
    assert src.stats().bad_decisions == 5  # 3 bad values, 1 absurd, 1 negative duration


def test_hard_deleted_decision_goes_at_resync(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    a = lapi.add("203.0.113.7")
    lapi.add("203.0.113.8")  # the others stay: a resync dropping most waits (see below)
    lapi.add("203.0.113.9")
    now = [0.0]
    src = StreamSource(client(url), 10.0, resync_interval=100.0, clock=lambda: now[0])
    assert src.pull_once()
    lapi.hard_delete(a)
    now[0] = 50.0
    assert src.pull_once()
    assert len(src.lookup(*key("203.0.113.7"), "")) == 1  # LAPI never said
    now[0] = 150.0
    assert src.pull_once()
    assert src.lookup(*key("203.0.113.7"), "") == []


def test_decision_expires_locally_without_lapi(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.add("203.0.113.7", duration="30s")
    now = [0.0]
    src = StreamSource(client(url), 10.0, clock=lambda: now[0])
    assert src.pull_once()
    lapi.fault = Fault(status=500)
    now[0] = 29.0
    assert len(src.lookup(*key("203.0.113.7"), "")) == 1
    now[0] = 31.0
    assert src.lookup(*key("203.0.113.7"), "") == []


def test_stream_thread_starts_and_stops_quickly(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.add("203.0.113.7")
    src = StreamSource(client(url), 0.05)
    src.start()
    assert eventually(lambda: src.usable, timeout=5, step=0.01)
    lapi.add("198.51.100.1")
    assert eventually(lambda: bool(src.lookup(*key("198.51.100.1"), "")), timeout=5, step=0.01)
    started = time.monotonic()
    src.stop()
    assert time.monotonic() - started < 2.0


def test_live_caches_bans_and_clean_answers(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.add("203.0.113.7", duration="1h")
    now = [0.0]
    src = LiveSource(client(url), 60.0, timeout=2.0, clock=lambda: now[0])
    for _ in range(5):
        assert [d.value for d in src.lookup(*key("203.0.113.7"), "203.0.113.7")] == \
            ["203.0.113.7"]
        assert src.lookup(*key("198.51.100.1"), "198.51.100.1") == []
    assert lapi.count("/v1/decisions") == 2
    now[0] = 61.0
    src.lookup(*key("198.51.100.1"), "198.51.100.1")
    assert lapi.count("/v1/decisions") == 3


def test_live_cache_never_outlives_the_ban(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    ident = lapi.add("203.0.113.7", duration="10s")
    now = [0.0]
    src = LiveSource(client(url), 60.0, timeout=2.0, clock=lambda: now[0])
    assert src.lookup(*key("203.0.113.7"), "203.0.113.7")
    lapi.hard_delete(ident)
    now[0] = 11.0
    assert src.lookup(*key("203.0.113.7"), "203.0.113.7") == []
    assert lapi.count("/v1/decisions") == 2


def test_live_answers_read_as_a_pull_would_and_count_bad_decisions(
        fake_lapi: tuple[FakeLapi, str]) -> None:
    """A live answer gives what a stream pull of the same decisions would hold: values in
    canonical form, most severe first; an unusable decision in it is skipped and counted
    in the metrics, as in stream mode."""
    lapi, url = fake_lapi
    lapi.add("203.0.113.77/24", scope="Range", type_="captcha")
    ban = lapi.add("203.0.113.7")
    lapi.add("203.0.113.0/25", scope="Range", duration="forever")  # not a Go duration
    lapi.add("2001:DB8:0::1")
    src = LiveSource(client(url), 60.0, timeout=2.0)
    found = src.lookup(*key("203.0.113.7"), "203.0.113.7")
    assert [(d.id, d.type, d.value) for d in found or []] == [
        (ban, "ban", "203.0.113.7"), (ban - 1, "captcha", "203.0.113.0/24")]
    assert [d.value for d in src.lookup(*key("2001:db8::1"), "2001:db8::1") or []] == \
        ["2001:db8::1"]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MilterCollector(Tally(), src, None))  # type: ignore[arg-type]
    assert metric(generate_latest(registry).decode(), "crowdsec_milter_bad_decisions_total") == 1


def test_live_concurrent_lookups_of_one_ip_make_one_request(
        fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.add("203.0.113.7")
    lapi.fault = Fault(delay=0.3, count=1, status=200, body=None)
    src = LiveSource(client(url), 60.0, timeout=2.0)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(
        src.lookup(*key("203.0.113.7"), "203.0.113.7"))) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lapi.count("/v1/decisions") == 1
    assert all(isinstance(r, list) and len(r) == 1 for r in results)


def test_live_error_is_none_and_not_cached(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.fault = Fault(hang=True)
    src = LiveSource(client(url, timeout=0.3), 60.0, timeout=0.3)
    started = time.monotonic()
    assert src.lookup(*key("203.0.113.7"), "203.0.113.7") is None
    assert time.monotonic() - started < 1.5
    assert not src.usable
    lapi.fault = None
    assert src.lookup(*key("203.0.113.7"), "203.0.113.7") == []
    assert src.usable


def _within(seconds: float, call: Callable[[], object]) -> tuple[bool, object]:
    """Run `call` in a thread; (True, result) if it returned within `seconds`, else
    (False, None) without waiting for it any longer."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    return (not thread.is_alive(), result[0] if result else None)


def test_drip_fed_live_lookup_ends_at_the_timeout(fake_lapi: tuple[FakeLapi, str]) -> None:
    """--lapi-timeout is the whole request: a LAPI that sends a byte every 0.4 s (never
    idle for a full read timeout) must not hold a session many times the timeout."""
    lapi, url = fake_lapi
    lapi.add("203.0.113.7")
    lapi.fault = Fault(drip=0.4)
    src = LiveSource(client(url, timeout=0.5), 60.0, timeout=0.5)
    # generous: "it was cut at all", not a timing target
    done, result = _within(4 * 0.5, lambda: src.lookup(*key("203.0.113.7"), "203.0.113.7"))
    assert done, "live lookup still waiting on a drip-fed answer after 4x --lapi-timeout"
    assert result is None and not src.usable
    assert src.stats().errors == {"timeout": 1}


def test_drip_fed_stream_pull_has_its_own_bound(fake_lapi: tuple[FakeLapi, str]) -> None:
    lapi, url = fake_lapi
    lapi.add("203.0.113.7")
    lapi.fault = Fault(drip=0.2)
    lapi_client = client(url, timeout=0.5, startup_timeout=0.5, pull_total=1.0,
                         startup_total=1.0)
    src = StreamSource(lapi_client, 10.0)
    done, ok = _within(4 * 1.0, src.pull_once)
    assert done, "stream pull still waiting on a drip-fed answer after 4x its bound"
    assert ok is False and not src.usable
    lapi.fault = None
    assert src.pull_once() and src.lookup(*key("203.0.113.7"), "")
    lapi.fault = Fault(drip=0.2)  # a delta pull too
    done, ok = _within(4 * 1.0, src.pull_once)
    assert done and ok is False
    assert lapi.requests[-1][1]["startup"] == ["false"]


def _hold_many(lapi: FakeLapi) -> list[tuple[int, str]]:
    """100 decisions of every kind the index keeps apart: v4 and v6, Ip and Range."""
    held = []
    for i in range(100):
        value, scope = [(f"198.51.{i}.9", "Ip"), (f"10.{i}.0.0/16", "Range"),
                        (f"2001:db8::{i:x}", "Ip"), (f"2001:db8:{i:x}::/48", "Range")][i % 4]
        ident = lapi.add(value, scope=scope)
        probe = value.split("/")[0] if scope == "Ip" else value.replace(".0.0/16", ".3.3") \
            .replace("::/48", "::5")
        held.append((ident, probe))
    return held


def _blocked(src: StreamSource, held: list[tuple[int, str]]) -> set[int]:
    return {ident for ident, probe in held
            if any(d.id == ident for d in src.lookup(*key(probe), "") or ())}


def test_full_resync_dropping_most_decisions_waits_for_the_next_to_agree(
        fake_lapi: tuple[FakeLapi, str], caplog: pytest.LogCaptureFixture) -> None:
    lapi, url = fake_lapi
    held = _hold_many(lapi)
    now = [0.0]
    src = StreamSource(client(url), 10.0, resync_interval=3600.0, clock=lambda: now[0])
    assert src.pull_once()
    assert _blocked(src, held) == {i for i, _ in held}
    for ident, _ in held[10:]:  # LAPI really lost 90% (say, alerts deleted in bulk)
        lapi.hard_delete(ident)
    now[0] = 3600.0  # the periodic full resync
    caplog.clear()
    assert src.pull_once()
    assert lapi.requests[-1][1]["startup"] == ["true"]
    assert _blocked(src, held) == {i for i, _ in held}  # not applied yet
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "10 decision(s)" in warnings[0].getMessage()
    now[0] = 3610.0  # the next update is a full pull again, and it agrees
    caplog.clear()
    assert src.pull_once()
    assert lapi.requests[-1][1]["startup"] == ["true"]
    assert _blocked(src, held) == {i for i, _ in held[:10]}
    assert any("applying" in r.getMessage() for r in caplog.records)
    now[0] = 3620.0
    assert src.pull_once()
    assert lapi.requests[-1][1]["startup"] == ["false"]  # back to deltas


def test_a_truncated_full_resync_loses_nothing(fake_lapi: tuple[FakeLapi, str],
                                               caplog: pytest.LogCaptureFixture) -> None:
    """LAPI ended a full answer early with a 200 and valid JSON (a database error while it
    streamed): a glitch that the next full pull shows for what it is."""
    lapi, url = fake_lapi
    held = _hold_many(lapi)
    now = [0.0]
    src = StreamSource(client(url), 10.0, resync_interval=3600.0, clock=lambda: now[0])
    assert src.pull_once()
    truncated = {"new": [lapi.decisions[i] for i, _ in held[:10]], "deleted": None}
    lapi.fault = Fault(body=json.dumps(truncated).encode(), count=1)
    now[0] = 3600.0
    caplog.clear()
    assert src.pull_once()
    assert _blocked(src, held) == {i for i, _ in held}
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
    late = lapi.add("203.0.113.50")
    now[0] = 3610.0
    caplog.clear()
    assert src.pull_once()
    assert lapi.requests[-1][1]["startup"] == ["true"]
    assert _blocked(src, held) == {i for i, _ in held}  # nothing lost
    assert [d.id for d in src.lookup(*key("203.0.113.50"), "")] == [late]
    assert any("not applied" in r.getMessage() for r in caplog.records)


def test_first_sync_takes_any_answer(fake_lapi: tuple[FakeLapi, str]) -> None:
    """Nothing held yet: even a tiny first answer is applied at once."""
    lapi, url = fake_lapi
    a = lapi.add("203.0.113.7")
    src = StreamSource(client(url), 10.0)
    assert src.pull_once()
    assert [d.id for d in src.lookup(*key("203.0.113.7"), "")] == [a]


def test_a_decision_no_delta_brings_is_held_within_a_minute(
        fake_lapi: tuple[FakeLapi, str]) -> None:
    """CrowdSec 1.4.6 can leave a decision out of every delta (seen in
    integration/test_drift.py: a ban the real LAPI held was missing until the next full
    resync, an hour later by default). Full resyncs come as often as every minute while
    they are cheap, so such a ban is enforced within about a minute."""
    lapi, url = fake_lapi
    lapi.add("203.0.113.8")
    now = [0.0]
    src = StreamSource(client(url), 10.0, clock=lambda: now[0])  # --resync-interval 3600
    assert src.pull_once()
    lapi.slip("203.0.113.9")
    for now[0] in (10.0, 20.0, 30.0, 40.0, 50.0):
        assert src.pull_once()
        assert src.lookup(*key("203.0.113.9"), "") == []  # no delta has it
    now[0] = 60.0
    assert src.pull_once()
    assert [d.value for d in src.lookup(*key("203.0.113.9"), "")] == ["203.0.113.9"]
    assert lapi.count("/v1/decisions/stream") == 7


def test_a_gap_in_the_ids_brings_a_full_resync_at_the_next_pull(
        fake_lapi: tuple[FakeLapi, str]) -> None:
    """LAPI's ids only grow: a later decision arriving while an earlier id never came is
    the sign of one left out, and the next pull is a full one (when that costs little)."""
    lapi, url = fake_lapi
    lapi.add("203.0.113.8")
    now = [0.0]
    src = StreamSource(client(url), 10.0, clock=lambda: now[0])
    assert src.pull_once()
    lapi.slip("203.0.113.9")
    now[0] = 10.0
    assert src.pull_once()  # nothing new: no sign yet
    lapi.add("203.0.113.10")
    now[0] = 20.0
    assert src.pull_once()  # id 3 without id 2
    assert src.lookup(*key("203.0.113.9"), "") == []
    now[0] = 30.0
    assert src.pull_once()
    assert [d.value for d in src.lookup(*key("203.0.113.9"), "")] == ["203.0.113.9"]
    assert len(src.lookup(*key("203.0.113.10"), "")) == 1
    now[0] = 40.0
    assert src.pull_once()  # no gap left: a delta again
    assert lapi.requests[-1][1].get("startup") == ["false"]
