"""A short soak in CI (bench/soak.py, 20 s each mode): every session gets the verdict its
client deserves (banned rejected, clean accepted, no socket error or timeout), RSS and
threads stay flat under steady load, and in live mode the cache stays within --cache-size
(read from the milter's metrics). The 10-minute run is by hand:
.venv/bin/python bench/soak.py --seconds 600."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


@pytest.mark.parametrize("mode", ["stream", "live"])
def test_short_soak_is_flat_and_every_verdict_right(mode: str) -> None:
    out = subprocess.run([sys.executable, str(SOAK), "--seconds", "20", "--mode", mode],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    verdict = out.stdout.splitlines()[-2]
    assert verdict.startswith("verdict: flat") and "failures=0" in verdict, out.stdout
    found = re.search(r"\((\d+) banned rejected, (\d+) clean accepted\)", verdict)
    assert found and int(found[1]) > 0 and int(found[2]) > 0, verdict
    if mode == "live":
        cache = re.search(r"live cache max (\d+)/(\d+)", verdict)
        assert cache and 0 < int(cache[1]) <= int(cache[2]), verdict
