"""Remediation usage metrics against Debian's real CrowdSec LAPI."""

from __future__ import annotations

from pathlib import Path

import pytest
from real_crowdsec import CrowdSec

pytestmark = pytest.mark.integration


def test_usage_metrics_on_a_lapi_without_the_endpoint(tmp_path: Path) -> None:
    """Debian's CrowdSec 1.4.6 predates /v1/usage-metrics: one info line, then quiet."""
    cs = CrowdSec(tmp_path / "cs").start()
    try:
        from crowdsec_milter.lapi import LapiClient
        from crowdsec_milter.source import StreamSource
        from crowdsec_milter.tally import Tally
        from crowdsec_milter.usage import UsagePusher

        client = LapiClient(cs.lapi_url, cs.add_bouncer("usage"), 2.0)
        source = StreamSource(client, 10.0)
        pusher = UsagePusher(client, Tally(), source, interval=60)
        assert not pusher.push_once()
        assert pusher.unsupported
        client.close()
    finally:
        cs.stop()
