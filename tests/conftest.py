"""Shared fixtures for the unit tests: a real HTTP server speaking the LAPI contract."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Helpers sit beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

from lapi_server import FakeLapi, serve, stop


@pytest.fixture
def fake_lapi() -> Iterator[tuple[FakeLapi, str]]:
    lapi = FakeLapi()
    server, url = serve(lapi)
    yield lapi, url
    stop(lapi, server)


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    """A bouncer key file as an operator writes it (owner-only, stray blanks and newline
    around the key, which the CLI strips)."""
    path = tmp_path / "key"
    path.write_text("  s3cret-key-value \n")
    path.chmod(0o600)
    return path
