"""Drift under churn, the long run: the milter's verdicts against the real LAPI 1.4.6's own
truth (`cscli decisions list`) through minutes of random adds, deletes, shorter re-adds,
expiries and LAPI restarts, in stream and live mode (integration/churn.py does the work;
integration/test_drift.py is the short CI version).

    .venv/bin/python bench/drift.py                       # 300 s per mode
    .venv/bin/python bench/drift.py --seconds 600 --mode stream --seed 11

Prints the figures: verdicts compared, mismatches within one pull interval (+ grace) of a
change, and drift (mismatches beyond it). Exit status 1 if there was any drift.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "integration"), str(HERE.parent / "tests")]

from churn import Churn  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="per mode")
    parser.add_argument("--mode", choices=("stream", "live", "both"), default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--restart-every", type=float, default=60.0,
                        help="seconds between LAPI restarts")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="--update-frequency (stream) and --cache-ttl (live)")
    args = parser.parse_args()
    drift = 0
    for mode in ("stream", "live") if args.mode == "both" else (args.mode,):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as folder:
            churn = Churn(Path(folder), mode, args.seed, interval=args.interval)
            try:
                report = churn.run(args.seconds, args.restart_every)
            finally:
                churn.close()
        print("\n".join(report.lines()), flush=True)
        drift += len(report.drift)
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())
