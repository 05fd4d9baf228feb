"""One mistyped Range decision must not close the mail server (issue 21, defect 12): real
CrowdSec 1.4.6 (`cscli decisions add --range 0.0.0.0/0` and `::/0`), the real milter
program, a real Postfix, clients played with XCLIENT, in stream and live mode."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest
from milter_process import scrape
from nodes import Node
from ports import free_port
from real_crowdsec import CrowdSec
from real_postfix import blocked, delivered
from waiting import eventually

pytestmark = pytest.mark.integration
_n = itertools.count(1)


@pytest.fixture(scope="module", params=["stream", "live"])
def node(request: pytest.FixtureRequest, lapi: CrowdSec,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, int]]:
    mode = request.param
    port = free_port()
    n = Node(tmp_path_factory.mktemp(mode), lapi, f"milter-{mode}", "--mode", mode,
             "--update-frequency", "0.5", "--cache-ttl", "1",
             "--metrics-listen", f"127.0.0.1:{port}")
    yield n, port
    n.stop()


def test_a_range_over_everything_is_logged_counted_and_not_enforced(
        node: tuple[Node, int], lapi: CrowdSec) -> None:
    n, port = node
    k = next(_n)
    banned, marker = f"192.0.2.{k}", f"192.0.2.{100 + k}"
    lapi.add_decision(ip=banned)
    lapi.add_decision(range_="0.0.0.0/0")
    lapi.add_decision(range_="::/0")
    lapi.add_decision(ip=marker)  # once it blocks, the stream has pulled the ranges too
    try:
        assert eventually(lambda: blocked(n.send(marker))), n.send(marker).text()
        for clean in (f"203.0.113.{k}", f"2001:db8:1::{k}"):
            t = n.send(clean)
            assert delivered(t), t.text()  # was 550: every client blocked
        assert blocked(n.send(banned))
        ids = {d["value"]: d["id"] for d in lapi.decisions()
               if d["value"] in ("0.0.0.0/0", "::/0")}
        log = n.milter.log()
        for value, ident in ids.items():
            lines = re.findall(rf"not enforcing decision id={ident} .*", log)
            assert len(lines) == 1, log  # once, however many pulls or lookups
            assert f"value={value} origin=cscli" in lines[0]
        assert scrape(port, "crowdsec_milter_decisions_too_wide") == 2
    finally:
        for value in ("0.0.0.0/0", "::/0"):
            lapi.delete_decisions(range_=value)
        lapi.delete_decisions(ip=banned)
        lapi.delete_decisions(ip=marker)
