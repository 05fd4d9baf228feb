"""The benchmark scripts run (smoke sizes): proves they work, not the figures, which are
measured by hand with bench/run.py and recorded in bench/README.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_benchmarks_run_at_smoke_size() -> None:
    out = subprocess.run([sys.executable, str(RUN), "--smoke"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    figures = [line.split(" | ")[0][2:] for line in table[1:]]
    for expected in ("index lookup hit", "index lookup miss", "startup pull", "steady RSS",
                     "peak RSS", "live mode", "per-session latency",
                     "Postfix throughput vs no milter"):
        assert any(f.startswith(expected) for f in figures), (expected, figures)
    assert "nan" not in "\n".join(table)
    # the C floors were built with the system compiler against libmilter, and every
    # configuration passed its verdict check (a wrong verdict stops the run before timing)
    for config in ("C accept", "C same protocol", "py same protocol", "crowdsec-milter",
                   "crowdsec bouncer"):
        assert any(f.endswith(f": {config}") for f in figures), (config, figures)


def test_the_state_file_bench_runs_at_smoke_size() -> None:
    out = subprocess.run([sys.executable, str(RUN.parent / "state.py"), "--smoke"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for figure in ("file:", "write (encode", "load (read", "longest gap",
                   "banned addresses found after a load: 2000/2000"):
        assert figure in out.stdout, (figure, out.stdout)
