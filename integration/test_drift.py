"""Zero drift, measured: a minute of churn against the real LAPI 1.4.6 (adds, deletes by
value and by id, shorter re-adds, expiries, LAPI restarts), and every address's verdict
follows LAPI's own truth (`cscli alerts list`, cross-checked with its bouncer API) within
one pull interval (+ grace), in stream and live mode. The long version, which prints the
figures: bench/drift.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from churn import Churn

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["stream", "live"])
def test_verdicts_follow_lapi_through_churn_and_restarts(tmp_path: Path, mode: str) -> None:
    churn = Churn(tmp_path, mode, seed=2026)
    try:
        report = churn.run(seconds=60, restart_every=18)
    finally:
        churn.close()
    print("\n".join(report.lines()))
    assert report.drift == [], "\n".join(report.lines())
    # the run did what it says: every kind of change, restarts, bans and clean verdicts
    assert report.restarts >= 2 and report.rounds >= 10
    assert {"add", "re-add shorter", "delete by id", "delete by value"} <= set(report.ops)
    assert 0 < report.banned_seen < report.comparisons
    assert report.truth_disagreements == 0  # the two views of LAPI's truth agree
