"""Integration fixtures: real CrowdSec and Postfix from Debian's packages, run privately.

These tests need root and the packages integration/setup.sh installs; they never skip:
a missing package is a failure, as it would be for a user.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# Our helpers beside the tests.
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))

from real_crowdsec import CrowdSec  # noqa: E402


@pytest.fixture(scope="module")
def lapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrowdSec]:
    """One real LAPI per test module, shared by its tests."""
    cs = CrowdSec(tmp_path_factory.mktemp("crowdsec")).start()
    yield cs
    cs.stop()
