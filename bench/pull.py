"""One startup pull in a process of its own, so its memory is measured alone.

usage: pull.py ours|pycrowdsec URL  -> prints a JSON line with seconds and MB figures.
"""

from __future__ import annotations

import gc
import json
import sys
import time

from common import peak_mb, rss_mb


def main() -> None:
    which, url = sys.argv[1], sys.argv[2]
    if which == "ours":
        from crowdsec_milter.decisions import parse_address
        from crowdsec_milter.lapi import LapiClient
        from crowdsec_milter.source import StreamSource

        client = LapiClient(url, "bench-key", 30.0)
        source = StreamSource(client, 10.0)
        gc.collect()
        before = rss_mb()
        started = time.monotonic()
        assert source.pull_once()
        key = parse_address("192.0.2.1")
        assert key is not None
        source.lookup(*key)  # the first lookup served from the synced index
        seconds = time.monotonic() - started
        held = len(source.index)
    else:
        from pycrowdsec.client import StreamClient

        client = StreamClient(api_key="bench-key", lapi_url=url)
        gc.collect()
        before = rss_mb()
        started = time.monotonic()
        client.cycle("true")
        client.get_action_for("192.0.2.1")
        seconds = time.monotonic() - started
        held = len(client.cache)
    gc.collect()
    after = rss_mb()
    print(json.dumps({"seconds": seconds, "steady_mb": after - before,
                      "peak_mb": peak_mb() - before, "held": held}))


if __name__ == "__main__":
    main()
