"""Shared fixtures for the unit tests: a real HTTP server speaking the LAPI contract."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lapi_server import FakeLapi, serve


@pytest.fixture
def fake_lapi() -> Iterator[tuple[FakeLapi, str]]:
    lapi = FakeLapi()
    server, url = serve(lapi)
    yield lapi, url
    lapi._stopping.set()
    server.shutdown()
    server.server_close()
