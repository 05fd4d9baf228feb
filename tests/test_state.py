"""The state file (--state-file): the last good decisions survive a restart, with absolute
expiries; a missing, truncated, corrupt or foreign file is refused with one warning line."""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import time
import zlib
from pathlib import Path

import pytest
from crowdsec_milter.decisions import Decision, Network, parse_address, parse_network
from crowdsec_milter.index import DecisionIndex
from crowdsec_milter.lapi import LapiClient
from crowdsec_milter.source import StreamSource
from crowdsec_milter.state import MAGIC, StateFile, decode, encode
from lapi_server import FakeLapi, Fault
from waiting import eventually

WALL = 1_800_000_000.0  # unix time of the write
BOOT = 5_000.0  # the writer's monotonic clock then


def at(ip: str) -> tuple[int, int]:
    parsed = parse_address(ip)
    assert parsed is not None
    return parsed[0], parsed[1]


def held(index: DecisionIndex, ip: str, now: float) -> list[tuple[int, str, str, float]]:
    return [(d.id, d.type, d.value, round(d.expires, 1)) for d in index.lookup(*at(ip), now)]


def sample() -> tuple[DecisionIndex, list[Decision]]:
    """Decisions of every shape the index keeps apart: IPv4 addresses (two on one, many
    in one /16), IPv4 and IPv6 ranges, IPv6 addresses, several kinds; relative to BOOT."""
    index = DecisionIndex()
    rows = [
        (1, "ban", "Ip", "192.0.2.1", "crowdsec", "ssh-bf", 3600.0),
        (2, "captcha", "Ip", "192.0.2.1", "cscli", "manual", 60.0),  # short: expires first
        (3, "ban", "Range", "198.51.100.0/24", "lists", "firehol", 7200.0),
        (4, "ban", "Ip", "2001:db8::7", "CAPI", "http-probing", 1800.0),
        (5, "ban", "Range", "2001:db8:1::/48", "cscli", "manual", 900.0),
        (6, "ban", "Ip", "10.0.0.0/32", "cscli", "manual", 30.0),  # an Ip written as /32
    ]
    rows += [(100 + i, "ban", "Ip", f"203.0.113.{i}", "CAPI", "ssh-bf", 600.0 + i)
             for i in range(1, 200)]
    for ident, dtype, scope, value, origin, scenario, ttl in rows:
        net = parse_network(scope.lower(), value)
        index.add(Decision(ident, dtype, scope, value, origin, scenario, BOOT + ttl), net)
    scoped = [Decision(900, "ban", "Country", "XX", "cscli", "manual", BOOT + 500.0),
              Decision(901, "ban", "AS", "64500", "cscli", "manual", BOOT + 50.0)]
    return index, scoped


def saved_file(tmp_path: Path) -> Path:
    index, scoped = sample()
    path = tmp_path / "decisions.state"
    state = StateFile(str(path), wall=lambda: WALL, clock=lambda: BOOT)
    assert state.save(index, scoped)
    return path


def load_after(path: Path, seconds: float, boot: float = 12.5):
    """Load as a new process would `seconds` after the write, its monotonic clock at
    `boot` (a reboot resets it)."""
    return StateFile(str(path), wall=lambda: WALL + seconds, clock=lambda: boot).load()


def test_round_trip_after_a_reboot_keeps_every_decision_with_its_absolute_expiry(
        tmp_path: Path) -> None:
    path = saved_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / "decisions.state.tmp").exists()
    loaded = load_after(path, 10.0)
    assert loaded is not None and loaded.dropped == 0 and loaded.saved == WALL
    # the new clock reads 12.5 where the old one would read BOOT + 10: every expiry moves
    # by the same amount, so each decision has as long left as it had
    move = 12.5 - (BOOT + 10.0)
    index, _ = sample()
    for ip in ("192.0.2.1", "198.51.100.77", "2001:db8::7", "2001:db8:1:ffff::1",
               "10.0.0.0", "203.0.113.1", "203.0.113.199", "192.0.2.2", "2001:db8::8"):
        before = [(i, t, v, round(e + move, 1)) for i, t, v, e in held(index, ip, BOOT + 10)]
        assert held(loaded.index, ip, 12.5) == before, ip
    assert len(loaded.index) == len(index) == 205
    assert sorted((d.id, d.scope, d.value, round(d.expires - move, 1))
                  for d in loaded.scoped) == [(900, "Country", "XX", BOOT + 500.0),
                                              (901, "AS", "64500", BOOT + 50.0)]
    assert loaded.index.counts() == index.counts()


def test_decisions_expired_since_the_write_are_dropped_on_load(tmp_path: Path) -> None:
    path = saved_file(tmp_path)
    loaded = load_after(path, 700.0)  # past 600+i for i < 100, the captcha, the /32 at 30 s
    assert loaded is not None
    assert held(loaded.index, "192.0.2.1", 12.5) == [(1, "ban", "192.0.2.1", 12.5 + 2900.0)]
    assert held(loaded.index, "10.0.0.0", 12.5) == []
    assert held(loaded.index, "203.0.113.100", 12.5) == []  # expiring at 700 s: gone
    assert len(held(loaded.index, "203.0.113.101", 12.5)) == 1
    assert [d.id for d in loaded.scoped] == []  # expired at 50 s and 500 s
    # 100 /32s (600+1 .. 600+100), the /32 at 30 s, the captcha, 2 scoped
    assert loaded.dropped == 100 + 1 + 1 + 2
    assert len(loaded.index) == 205 - 102
    loaded = load_after(path, 10 ** 6)
    assert loaded is not None and len(loaded.index) == 0 and loaded.dropped == 207


def refused(tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes | None,
            reason: str) -> None:
    path = tmp_path / "decisions.state"
    if content is not None:
        path.write_bytes(content)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, "crowdsec_milter"):
        assert load_after(path, 1.0) is None
    lines = [r for r in caplog.records if r.name.startswith("crowdsec_milter")]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING, caplog.text
    assert str(path) in lines[0].getMessage() and reason in lines[0].getMessage(), \
        lines[0].getMessage()


def test_a_missing_file_is_one_warning(tmp_path: Path, caplog) -> None:
    refused(tmp_path, caplog, None, "no such file")


@pytest.mark.parametrize("cut", [0, 5, len(MAGIC), len(MAGIC) + 3, 100, -12, -1])
def test_a_truncated_file_is_refused(tmp_path: Path, caplog, cut: int) -> None:
    whole = saved_file(tmp_path).read_bytes()
    reason = "empty" if cut == 0 else "truncated"
    refused(tmp_path, caplog, whole[:cut] if cut >= 0 else whole[:len(whole) + cut], reason)


@pytest.mark.parametrize("where", [len(MAGIC) + 10, 2000, -20, -3])
def test_a_corrupt_file_is_refused(tmp_path: Path, caplog, where: int) -> None:
    data = bytearray(saved_file(tmp_path).read_bytes())
    data[where] ^= 0x40
    refused(tmp_path, caplog, bytes(data), "corrupt")


def resealed(data: bytes, head_change: dict) -> bytes:
    """The file with its JSON head changed and a valid trailer again: a file that passes
    the checksum but does not hold together."""
    start = len(MAGIC) + 4
    (size,) = struct.unpack_from("<I", data, len(MAGIC))
    head = json.loads(data[start:start + size])
    head.update(head_change)
    raw = json.dumps(head).encode()
    body = MAGIC + struct.pack("<I", len(raw)) + raw + data[start + size:-12]
    return body + struct.pack("<QI", len(body), zlib.crc32(body))


@pytest.mark.parametrize(("change", "reason"), [
    ({"format": 2}, "format 2"),
    ({"byteorder": "big" if os.sys.byteorder == "little" else "little"}, "-endian"),
    ({"buckets": 7}, "corrupt"),
    ({"metas": [["ban", "Ip", "cscli", "x"]]}, "corrupt"),  # slots in buckets point past it
    ({"metas": None}, "corrupt head"),
    ({"tables": [[4, 40, 0], [4, 24, 1], [6, 128, 1], [6, 48, 1]]}, "corrupt"),  # a /40 in IPv4
    ({"tables": [[4, 24, 1], [6, 128, 1]]}, "corrupt"),  # fewer tables than the file holds
    ({"decisions": 10 ** 9}, "corrupt"),  # more than it holds
])
def test_a_file_that_passes_the_checksum_but_does_not_hold_together_is_refused(
        tmp_path: Path, caplog, change: dict, reason: str) -> None:
    data = saved_file(tmp_path).read_bytes()
    refused(tmp_path, caplog, resealed(data, change), reason)


@pytest.mark.parametrize("content", [b"not a state file at all\n", b'{"decisions": []}',
                                     b"\x00" * 4096, b"crowdsec-milter"])
def test_a_foreign_file_is_refused(tmp_path: Path, caplog, content: bytes) -> None:
    reason = "truncated" if MAGIC.startswith(content) else "not a crowdsec-milter state file"
    refused(tmp_path, caplog, content, reason)


def test_a_folder_or_a_fifo_is_refused_without_hanging(tmp_path: Path, caplog) -> None:
    (tmp_path / "decisions.state").mkdir()
    refused(tmp_path, caplog, None, "")
    (tmp_path / "decisions.state").rmdir()
    os.mkfifo(tmp_path / "decisions.state")  # nobody writes it: a blocking open would hang
    refused(tmp_path, caplog, None, "not a regular file")


def test_a_failed_write_keeps_the_last_good_file_and_logs_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = saved_file(tmp_path)
    good = path.read_bytes()
    (tmp_path / "decisions.state.tmp").mkdir()  # the temporary file cannot be made
    index, scoped = sample()
    state = StateFile(str(path), wall=lambda: WALL, clock=lambda: BOOT)
    with caplog.at_level(logging.INFO, "crowdsec_milter"):
        assert not state.save(index, [])
        assert not state.save(index, [])
        assert path.read_bytes() == good
        assert caplog.text.count("cannot write") == 1
        (tmp_path / "decisions.state.tmp").rmdir()
        assert state.save(index, scoped) and "written again" in caplog.text


def test_writes_are_paced(tmp_path: Path) -> None:
    now = [BOOT]
    state = StateFile(str(tmp_path / "s"), wall=lambda: WALL, clock=lambda: now[0])
    index, _ = sample()
    assert state.due() and state.save(index, [])
    now[0] += 29.0
    assert not state.due()
    now[0] += 1.0
    assert state.due()


def test_decode_of_what_encode_made_in_memory() -> None:
    """encode/decode alone (no file). An id past 64 bits (no LAPI makes one; the index
    holds it outside the buckets) is left out; the decision beside it comes back."""
    index = DecisionIndex()
    for ident in (1 << 70, 77):
        index.add(Decision(ident, "ban", "Ip", "192.0.2.9", "cscli", "m", BOOT + 100.0),
                  Network(4, 32, at("192.0.2.9")[1]))
    data = b"".join(encode(index, [], WALL, BOOT))
    loaded = decode(data, WALL + 1.0, 3.0)
    assert [(d.id, d.expires) for d in loaded.index.lookup(*at("192.0.2.9"), 3.0)] == \
        [(77, 3.0 + 99.0)]


# -- through the stream source --------------------------------------------------------------

def client(url: str) -> LapiClient:
    return LapiClient(url, "test-key", 2.0)


def test_a_source_restarted_with_lapi_down_enforces_the_saved_bans_at_once(
        fake_lapi: tuple[FakeLapi, str], tmp_path: Path) -> None:
    lapi, url = fake_lapi
    lapi.add("192.0.2.50")
    lapi.add("198.51.100.0/24", scope="Range")
    short = lapi.add("192.0.2.51", duration="2s")
    path = str(tmp_path / "decisions.state")
    first = StreamSource(client(url), 0.05, state=StateFile(path))
    first.start()
    try:
        assert eventually(lambda: os.path.exists(path))  # written after the first pull
    finally:
        first.stop()
    assert "test-key" not in Path(path).read_text(errors="replace")
    lapi.fault = Fault(status=500)  # LAPI down from here on
    lapi.decisions.pop(short)
    # a new process, 5 s later by the unix clock (the 2 s ban is over), its own clock
    later = time.time() + 5.0
    second = StreamSource(client(url), 0.05, clock=lambda: 10.0,
                          state=StateFile(path, wall=lambda: later, clock=lambda: 10.0))
    # before the puller has tried anything
    second.restore(second._state.load())  # type: ignore[union-attr,arg-type]
    assert second.usable
    assert [d.value for d in second.lookup(*at("192.0.2.50"), "192.0.2.50")] == ["192.0.2.50"]
    assert [d.value for d in second.lookup(*at("198.51.100.9"), "198.51.100.9")] == \
        ["198.51.100.0/24"]
    assert second.lookup(*at("192.0.2.51"), "192.0.2.51") == []
    assert second.pull_once() is False  # LAPI down: still enforced
    assert len(second.lookup(*at("192.0.2.50"), "192.0.2.50")) == 1


def test_the_first_good_pull_replaces_the_loaded_decisions(
        fake_lapi: tuple[FakeLapi, str], tmp_path: Path) -> None:
    lapi, url = fake_lapi
    old = lapi.add("192.0.2.60")
    path = str(tmp_path / "decisions.state")
    src = StreamSource(client(url), 10.0, state=StateFile(path))
    assert src.pull_once()
    src._persist(final=True)
    lapi.hard_delete(old)  # gone while the milter was down, never in `deleted`
    lapi.add("192.0.2.61")
    again = StreamSource(client(url), 10.0, state=StateFile(path))
    again.restore(again._state.load())  # type: ignore[union-attr,arg-type]
    assert len(again.lookup(*at("192.0.2.60"), "192.0.2.60")) == 1
    assert again.pull_once()
    assert again.lookup(*at("192.0.2.60"), "192.0.2.60") == []
    assert len(again.lookup(*at("192.0.2.61"), "192.0.2.61")) == 1


def test_nothing_is_written_when_nothing_changed(fake_lapi: tuple[FakeLapi, str],
                                                 tmp_path: Path) -> None:
    lapi, url = fake_lapi
    lapi.add("192.0.2.70")
    path = tmp_path / "decisions.state"
    now = [0.0]
    src = StreamSource(client(url), 10.0, state=StateFile(str(path), clock=lambda: now[0]),
                       clock=lambda: now[0])
    assert src.pull_once()
    src._persist(final=False)
    first = path.stat().st_mtime_ns
    now[0] = 30.0
    assert src.pull_once()  # an empty delta
    src._persist(final=False)
    assert path.stat().st_mtime_ns == first
    lapi.fault = Fault(status=500)
    assert not src.pull_once()
    src._persist(final=True)
    assert path.stat().st_mtime_ns == first


def test_the_option_none_empty_and_a_folder(tmp_path: Path) -> None:
    from crowdsec_milter.cli import load
    from crowdsec_milter.settings import ConfigError

    assert load(["--api-key", "k"]).state_file == "/var/lib/crowdsec-milter/decisions.state"
    assert load(["--api-key", "k", "--state-file", "none"]).state_file == ""
    assert load(["--api-key", "k", "--state-file", ""]).state_file == ""
    assert load(["--api-key", "k", "--state-file", str(tmp_path / "s")]).state_file == \
        str(tmp_path / "s")
    with pytest.raises(ConfigError, match=r"--state-file .*: is a folder"):
        load(["--api-key", "k", "--state-file", str(tmp_path)])
