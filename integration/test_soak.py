"""A short soak in CI (bench/soak.py, 20 s each mode): RSS and threads stay flat under steady
load, and in live mode the cache stays within --cache-size. The 10-minute run is by hand:
.venv/bin/python bench/soak.py --seconds 600."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


@pytest.mark.parametrize("mode", ["stream", "live"])
def test_short_soak_is_flat(mode: str) -> None:
    out = subprocess.run([sys.executable, str(SOAK), "--seconds", "20", "--mode", mode],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verdict: flat" in out.stdout
